"""The alert rules and Prometheus' config, checked by Prometheus' own promtool: every alert fires
on its condition after its `for:` and stays quiet otherwise (deploy/prometheus/alerts.test.yml).

promtool comes with Debian's `prometheus` package; `.ci/run` installs it, so CI never skips these.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus"

pytestmark = pytest.mark.skipif(
    not shutil.which("promtool"), reason="promtool not installed (apt-get install prometheus; .ci/run does)"
)


def promtool(*args: str) -> str:
    done = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def alert_names() -> set[str]:
    rules = yaml.safe_load((RULES / "alerts.yml").read_text())
    return {r["alert"] for g in rules["groups"] for r in g["rules"]}


def test_every_alert_fires_on_its_cause_and_stays_quiet_otherwise() -> None:
    assert "SUCCESS" in promtool("test", "rules", str(RULES / "alerts.test.yml"))


def test_every_alert_has_a_firing_case_and_a_quiet_case() -> None:
    tests = yaml.safe_load((RULES / "alerts.test.yml").read_text())
    firing: set[str] = set()
    quiet: set[str] = set()
    for group in tests["tests"]:
        for case in group["alert_rule_test"]:
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    assert firing == alert_names() and quiet == alert_names()


def seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)([smh])", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


def test_every_alert_with_a_for_is_checked_quiet_before_it_elapses() -> None:
    """A group that sees the alert fire also sees it not firing yet, under the same series."""
    rules = yaml.safe_load((RULES / "alerts.yml").read_text())
    waits = {r["alert"] for g in rules["groups"] for r in g["rules"] if r.get("for")}
    checked = set()
    for group in yaml.safe_load((RULES / "alerts.test.yml").read_text())["tests"]:
        cases = group["alert_rule_test"]
        for fire in (c for c in cases if c["exp_alerts"]):
            if any(
                c["alertname"] == fire["alertname"]
                and not c["exp_alerts"]
                and seconds(c["eval_time"]) < seconds(fire["eval_time"])
                for c in cases
            ):
                checked.add(fire["alertname"])
    assert waits and waits <= checked, waits - checked


def test_the_rules_and_the_config_are_valid(tmp_path: Path) -> None:
    promtool("check", "rules", str(RULES / "alerts.yml"))
    # the config names the rules where the deployment mounts them; check it against the repo's file
    config = (RULES / "prometheus.yml").read_text().replace("/etc/prometheus/alerts.yml", str(RULES / "alerts.yml"))
    (tmp_path / "prometheus.yml").write_text(config)
    out = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert f"SUCCESS: {len(alert_names())} rules found" in out
