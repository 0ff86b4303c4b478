"""A real Prometheus scraping real workers: every alert expression and every Grafana panel query
parses and finds series the workers export, and an alert goes from inactive to firing when its
cause is induced.

Two pipelines run side by side, each with a worker and beat: one on SQS (moto), one on Kinesis
(moto; its broker is another Redis database, so neither takes the other's tasks), so that the
stream alerts' metrics exist too. Prometheus (Debian's `prometheus` package; `.ci/run` installs
it) scrapes both workers' metrics endpoints every second as the job `etl-worker`, with a copy of
deploy/prometheus/alerts.yml in which only EtlRejectsSpiking's `for:` is shortened.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.support import BROKER_URL, ProcessGroup, Quiet, pipeline_env, processes, wait_until

from etl import store  # isort: skip
from etl.ops import seeding
from etl.sources.kinesis import stream as kinesis
from etl.sources.sqs import queue as sqs

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
INDUCED = "EtlRejectsSpiking"  # the alert this test makes fire
INDUCED_FOR = "3s"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not shutil.which("prometheus"), reason="prometheus not installed (apt-get install prometheus; .ci/run does)"
    ),
]


class Prometheus:
    """A Prometheus server of the test's own: scrapes ``targets`` every second as the job
    ``etl-worker`` and evaluates ``rules`` every second."""

    def __init__(self, workdir: Path, targets: list[str], rules: dict[str, Any]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "alerts.yml").write_text(yaml.safe_dump(rules))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(workdir / "alerts.yml")],
            "scrape_configs": [{"job_name": "etl-worker", "static_configs": [{"targets": targets}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        for _ in range(5):  # a free port is only a candidate: another one if it was taken meanwhile
            self.port = processes.free_port()
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(
                    [
                        "prometheus",
                        f"--config.file={workdir / 'prometheus.yml'}",
                        f"--storage.tsdb.path={workdir / 'data'}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            wait_until(lambda: self.proc.poll() is not None or self._ready(), 60, "prometheus to start")
            if self.proc.poll() is None:
                return  # ready, and on its own port (one that lost the port exits)
        raise RuntimeError(f"prometheus did not start; see {self.log}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return int(r.status) == 200
        except (OSError, urllib.error.HTTPError):
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as err:
            body = json.loads(err.read())
        assert body["status"] == "success", (params, body.get("error"))
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now (fails the test if it does not parse)."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        return list(data["result"])

    def value(self, expr: str) -> float:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else 0.0

    def rule(self, alert: str) -> dict[str, Any]:
        for group in self.api("rules", type="alert")["groups"]:
            for rule in group["rules"]:
                if rule["name"] == alert:
                    return dict(rule)
        raise AssertionError(f"no alerting rule {alert}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# Words of PromQL that are not metric names (aggregations and functions are told by their "(").
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def selectors(expr: str) -> list[str]:
    """The series selectors in ``expr`` (``name`` or ``name{matchers}``), ranges dropped.

    Enough PromQL for the project's queries: label lists of by/on/... clauses, range and
    subquery brackets and string literals are skipped; a name followed by "(" is a function.
    """
    text = GROUPING.sub(" ", expr)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    found = []
    for m in re.finditer(r'([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?\s*(\()?|"(?:[^"\\]|\\.)*"|\d[\w.]*', text):
        name, matchers, call = m.groups()
        if name and not call and name.lower() not in KEYWORDS:
            found.append(name + (matchers or ""))
    return found


def test_selectors_reads_the_project_s_query_shapes() -> None:
    assert selectors('histogram_quantile(0.95, sum(rate(a_bucket{le!="x"}[5m])) by (le)) > 300') == [
        'a_bucket{le!="x"}'
    ]
    assert selectors('max(a{state="visible"}) > 0 and sum(increase(b_total[10m])) == 0') == [
        'a{state="visible"}',
        "b_total",
    ]
    assert selectors("max(a and on(shard) (b > 0 or c == 1)) > 600") == ["a", "b", "c"]
    assert selectors('count(up{job="etl-worker"} == 1)') == ['up{job="etl-worker"}']


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every panel target in every dashboard, rows' panels included."""
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            out.extend((panel.get("title", ""), t["expr"]) for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    for path in sorted(DASHBOARDS.glob("*.json")):
        walk(json.loads(path.read_text())["panels"])
    assert out, "no dashboard queries found"
    return out


def alert_rules() -> dict[str, Any]:
    return dict(yaml.safe_load(ALERTS.read_text()))


@pytest.fixture
def streaming(
    sqs_endpoint: str, conn: store.Connection, tmp_path: Path
) -> Iterator[tuple[kinesis.Stream, ProcessGroup]]:
    """A 2-shard Kinesis stream and a process group reading it, on a broker database of its own."""
    broker_url = re.sub(r"/\d+$", "", BROKER_URL) + "/14"
    assert broker_url != BROKER_URL
    client = redis.Redis.from_url(broker_url)
    client.flushdb()
    saved = os.environ.get("AWS_ENDPOINT_URL_KINESIS")
    os.environ["AWS_ENDPOINT_URL_KINESIS"] = sqs_endpoint
    stream = kinesis.Stream(f"logins-{uuid.uuid4().hex[:8]}")
    stream.create(2)
    env = pipeline_env(
        "http://unused.invalid/000000000000/none",
        sqs_endpoint,
        ETL_SOURCE="kinesis",
        KINESIS_STREAM_NAME=stream.name,
        AWS_ENDPOINT_URL_KINESIS=sqs_endpoint,
        CELERY_BROKER_URL=broker_url,
    )
    (tmp_path / "kinesis").mkdir()
    group = ProcessGroup(env=env, workdir=tmp_path / "kinesis")
    yield stream, group
    group.stop()
    if saved is None:
        os.environ.pop("AWS_ENDPOINT_URL_KINESIS", None)
    else:
        os.environ["AWS_ENDPOINT_URL_KINESIS"] = saved
    client.flushdb()
    client.close()


def login(i: int) -> str:
    return json.dumps(
        {"user_id": f"u{i}", "device_type": "ios", "ip": "10.0.0.1", "device_id": f"d{i}", "app_version": "1.0"}
    )


def test_alerts_and_dashboards_against_real_workers(
    pipeline: ProcessGroup,
    queue: sqs.Queue,
    streaming: tuple[kinesis.Stream, ProcessGroup],
    tmp_path: Path,
) -> None:
    stream, stream_group = streaming
    ports = [
        pipeline.start_listening("worker", "ETL_METRICS_PORT", unavailable="metrics port", timeout=90),
        stream_group.start_listening("worker", "ETL_METRICS_PORT", unavailable="metrics port", timeout=90),
    ]
    pipeline.start("beat")
    stream_group.start("beat")
    rules = alert_rules()
    (induced,) = [r for g in rules["groups"] for r in g["rules"] if r["alert"] == INDUCED]
    induced["for"] = INDUCED_FOR
    prometheus = Prometheus(tmp_path / "prometheus", [f"127.0.0.1:{p}" for p in ports], rules)
    try:
        # healthy traffic on both sources: rows, no rejections, the alert quiet
        queue.send([login(i) for i in range(30)])
        assert len(seeding.put(stream, [login(100 + i) for i in range(20)], Quiet())) == 20
        wait_until(lambda: prometheus.value("sum(etl_rows_written_total)") >= 50, 120, "50 rows seen by prometheus")
        wait_until(lambda: prometheus.value("sum(etl_messages_deleted_total)") >= 30, 30, "30 deletes seen")
        seen = time.time()

        def evaluated_since() -> dict[str, Any] | None:
            r = prometheus.rule(INDUCED)
            return r if _epoch(r["lastEvaluation"]) > seen + 1 else None

        rule = wait_until(evaluated_since, 30, "the rules to be evaluated over the healthy traffic")
        assert rule["state"] == "inactive" and rule["health"] == "ok", rule

        # the cause: a producer sends malformed bodies
        queue.send(["not json", "[]", '{"user_id": "x"}', '{"user_id": 5, "ip": []}'] * 5)
        states = [rule["state"]]

        def fired() -> bool:
            state = prometheus.rule(INDUCED)["state"]
            if state != states[-1]:
                states.append(state)
            return state == "firing"

        wait_until(fired, 120, f"{INDUCED} to fire", interval=0.2)
        assert states == ["inactive", "pending", "firing"], states
        (alert,) = [a for a in prometheus.api("alerts")["alerts"] if a["labels"]["alertname"] == INDUCED]
        assert alert["state"] == "firing" and alert["labels"]["severity"] == "warning"

        # every expression parses and every series it selects exists, from this traffic alone
        queries = [(r["alert"], r["expr"]) for g in alert_rules()["groups"] for r in g["rules"]]
        queries += dashboard_queries()

        def missing() -> list[str]:
            gone = [
                f"{where}: {sel}" for where, expr in queries for sel in selectors(expr) if not prometheus.query(sel)
            ]
            gone += [f"{where}: {expr}" for where, expr in dashboard_queries() if not prometheus.query(expr)]
            return gone

        for where, expr in queries:
            prometheus.query(expr)  # parses (a parse error fails here, with Prometheus' message)
            assert selectors(expr), (where, expr)
        try:
            wait_until(lambda: not missing(), 30, "every selector and panel query to return series")
        except AssertionError:
            pytest.fail("no series for " + "; ".join(missing()))
        # no other alert fired on healthy traffic and malformed bodies
        firing = {a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"] if a["state"] == "firing"}
        assert firing == {INDUCED}, firing
        assert prometheus.value('count(up{job="etl-worker"} == 1)') == 2

        # etl stats' latency percentiles (from Redis) are Prometheus' histogram_quantile of the
        # same worker's histogram, for both sources
        for group, port in ((pipeline, ports[0]), (stream_group, ports[1])):
            worker = f'instance="127.0.0.1:{port}"'

            def agree(group: ProcessGroup = group, worker: str = worker) -> dict[str, Any] | None:
                lat: dict[str, Any] = json.loads(etl_command(group, "stats", "--json"))["latency"]
                count = prometheus.value(f"sum(etl_end_to_end_lag_seconds_count{{{worker}}})")
                return lat if lat["messages"] == count > 0 else None

            lat = wait_until(agree, 30, "etl stats and prometheus to count the same messages")
            for q, key in ((0.5, "p50_s"), (0.99, "p99_s")):
                expected = prometheus.value(
                    f"histogram_quantile({q}, sum(etl_end_to_end_lag_seconds_bucket{{{worker}}}) by (le))"
                )
                assert lat[key] == pytest.approx(expected, abs=0.001), (key, lat, expected)
            assert f"latency:   p50 {lat['p50_s']} s, p99 {lat['p99_s']} s" in etl_command(group, "stats")
    finally:
        prometheus.stop()


def etl_command(group: ProcessGroup, *args: str) -> str:
    """The `etl` command, run as an operator would, with the group's environment."""
    done = subprocess.run(
        [sys.executable, "-m", "etl.ops.cli", *args], env=group.env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _epoch(timestamp: str) -> float:
    """Prometheus' RFC 3339 timestamps (nanoseconds, Z) as epoch seconds."""
    from datetime import datetime

    head = re.sub(r"(\.\d{6})\d*", r"\1", timestamp).replace("Z", "+00:00")
    return datetime.fromisoformat(head).timestamp()
