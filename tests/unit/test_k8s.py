"""Deployment files parse, carry their required fields, and run what the local path runs."""

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from etl.demo.processes import COMMANDS

ROOT = Path(__file__).parents[2]
K8S = ROOT / "deploy" / "k8s"


def docs() -> list[dict[str, Any]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        out += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def by(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs() if d["kind"] == kind and d["metadata"]["name"] == name)


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return deployment["spec"]["template"]["spec"]["containers"]  # type: ignore[no-any-return]


def test_every_document_has_the_basics() -> None:
    for d in docs():
        assert {"apiVersion", "kind", "metadata"} <= set(d), d
        assert d["metadata"].get("name")
        if d["kind"] == "Deployment":
            spec = d["spec"]
            assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
            for c in containers(d):
                assert c["image"] and c["resources"]["requests"] and c["resources"]["limits"]


@pytest.mark.parametrize(("name", "kind"), [("etl-worker", "worker"), ("etl-beat", "beat"), ("etl-flower", "flower")])
def test_deployments_run_the_demo_commands(name: str, kind: str) -> None:
    (container,) = containers(by("Deployment", name))
    assert container["command"] == COMMANDS[kind]


def test_one_image_for_everything() -> None:
    images = {c["image"] for d in docs() if d["kind"] == "Deployment" for c in containers(d)}
    assert len(images) == 1


def test_exactly_one_beat_never_two_during_a_rollout() -> None:
    beat = by("Deployment", "etl-beat")
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"


def test_worker_probe_is_etl_health_and_keda_scales_it_on_sqs() -> None:
    (worker,) = containers(by("Deployment", "etl-worker"))
    assert "etl health --node" in " ".join(worker["livenessProbe"]["exec"]["command"])
    scaled = by("ScaledObject", "etl-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "etl-worker"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "aws-sqs-queue" and trigger["metadata"]["queueURL"]
    assert trigger["metadata"]["queueURL"] == by("ConfigMap", "etl-config")["data"]["SQS_QUEUE_URL"]


def test_the_kinesis_variant_scales_on_the_stream_it_reads() -> None:
    variant = [d for p in sorted((K8S / "kinesis").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    config = next(d for d in variant if d["kind"] == "ConfigMap")
    sqs_config = by("ConfigMap", "etl-config")
    assert config["metadata"]["name"] == sqs_config["metadata"]["name"], "it replaces the SQS ConfigMap"
    assert config["data"]["ETL_SOURCE"] == "kinesis" and "SQS_QUEUE_URL" not in config["data"]
    assert {k: v for k, v in sqs_config["data"].items() if k != "SQS_QUEUE_URL"}.items() <= config["data"].items()
    scaled = next(d for d in variant if d["kind"] == "ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "aws-kinesis-stream"
    assert trigger["metadata"]["streamName"] == config["data"]["KINESIS_STREAM_NAME"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "etl-worker"
    auth = next(d for d in variant if d["kind"] == "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]


def test_secrets_come_from_the_secret_not_the_configmap() -> None:
    config = by("ConfigMap", "etl-config")["data"]
    secret = by("Secret", "etl-secrets")["stringData"]
    assert {"ETL_MASKING_KEY", "ETL_PAYLOAD_KEY", "DATABASE_URL", "FLOWER_BASIC_AUTH"} <= set(secret)
    assert not {k for k in config if "KEY" in k or "PASSWORD" in k or k == "DATABASE_URL"}


def metric_names() -> set[str]:
    source = (ROOT / "etl" / "worker" / "metrics.py").read_text()
    names = set(re.findall(r'(?:Counter|Histogram|GaugeMetricFamily)\(\s*"(etl_[a-z_]+)"', source))
    return names | {n + "_total" for n in names} | {n + "_bucket" for n in names} | {n + "_count" for n in names}


def test_dashboard_and_alerts_use_metrics_that_exist() -> None:
    known = metric_names() | {"up"}
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "etl.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    exprs += [r["expr"] for g in alerts["groups"] for r in g["rules"]]
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for word in ("throughput", "lag", "rejected", "queue depth", "workers"):
        assert word in titles
    for expr in exprs:
        used = set(re.findall(r"\b(etl_[a-z_]+|up)\b", expr))
        assert used and used <= known, (expr, used - known)
    assert {r["alert"] for g in alerts["groups"] for r in g["rules"]} >= {
        "EtlLagHigh",
        "EtlRejectsSpiking",
        "EtlNoProgress",
    }


def test_prometheus_scrapes_the_workers_metrics_port() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["dns_sd_configs"][0]["port"] == 9808


def test_ci_workflow_runs_the_whole_make_test_and_pushes_on_tags() -> None:
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    test = wf["jobs"]["test"]
    assert "services" not in test  # the suite starts servers of its own (tests/support.py)
    runs = [step.get("run", "") for step in test["steps"]]
    assert "make test" in runs and not any("--deselect" in r for r in runs)  # chaos 1, 3, 7 as README says
    image = wf["jobs"]["image"]
    assert image["needs"] == "test" and "refs/tags" in image["if"]
    assert any("docker push" in step.get("run", "") for step in image["steps"])
