"""README's setup recipe, run as printed: the commands come from README itself, so they cannot drift.

The only step the test adds is the one the recipe asks the reader to do ("then edit .env"): it
writes where this run's services are into `.env`. Everything else is README's text, run by bash
in a fresh directory, and must end with every seeded event in Postgres.
"""

import os
import re
import signal
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support import BROKER_URL, DATABASE_URL, wait_until

from etl import settings, store  # isort: skip

ROOT = Path(__file__).parents[2]
EDIT_MARK = "then edit .env"
REPO_FILES = (
    "Makefile",
    "requirements.txt",
    "requirements-dev.txt",
    "pyproject.toml",
    ".env.example",
    ".venv",
    "tools",
)


def recipe() -> list[str]:
    """The sh block after README's "Running it against your own services" line, one command a line."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("Running it against your own services")
    block = re.search(r"```sh\n(.*?)```", readme[start:], re.S)
    assert block, "README's recipe has no sh block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_recipe_is_where_the_test_expects_it() -> None:
    lines = recipe()
    assert sum(EDIT_MARK in line for line in lines) == 1
    assert any("etl keygen" in line for line in lines)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A fresh directory holding what a clone holds for the recipe (the venv already installed)."""
    for name in REPO_FILES:
        (tmp_path / name).symlink_to(ROOT / name)
    yield tmp_path


def test_readme_recipe_runs_as_printed(
    workdir: Path, conn: store.Connection, sqs_endpoint: str, broker: redis.Redis
) -> None:
    lines = recipe()
    at = next(i for i, line in enumerate(lines) if EDIT_MARK in line) + 1
    queue_url = f"{sqs_endpoint}/123456789012/recipe-{uuid.uuid4().hex[:8]}"
    edit = [  # the reader's edit: where this run's services are (appended, as a reader would change them)
        "cat >> .env <<'EOF'",
        f"DATABASE_URL={DATABASE_URL}",
        f"CELERY_BROKER_URL={BROKER_URL}",
        f"SQS_QUEUE_URL={queue_url}",
        f"AWS_ENDPOINT_URL_SQS={sqs_endpoint}",
        "ETL_METRICS_PORT=0",
        "EOF",
    ]
    script = "set -e\n" + "\n".join([*lines[:at], *edit, *lines[at:]]) + "\n"
    # the reader's shell: none of this run's settings, so .env alone configures the commands
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ETL_", "AWS_", "SQS_", "DATABASE_", "CELERY_", "FLOWER_", "KINESIS_"))
    }
    out = (workdir / "recipe.log").open("w")
    proc = subprocess.Popen(
        ["bash", "-c", script], cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        assert proc.wait(timeout=180) == 0, (workdir / "recipe.log").read_text()
        wait_until(lambda: (lambda s: s["rows"] + s["rejected"] == 100)(store.stats(conn)), 120, "100 events stored")
        log = (workdir / "recipe.log").read_text()
        assert "sent 100 messages" in log and "refuse" not in log, log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the worker and beat the recipe left running
        proc.wait(timeout=30)
        out.close()
    # keygen's private key: a file of its own, owner-only, absent from the workers' env
    key_file = workdir / "vault-private.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((workdir / ".env").stat().st_mode) == 0o600  # the workers' keys: owner-only too
    dotenv = (workdir / ".env").read_text()
    assert key_file.read_text().strip() not in dotenv and not re.search("^ETL_VAULT_PRIVATE_KEY", dotenv, re.M)
    loaded = settings.load(dict(re.findall(r"^([A-Z_0-9]+)=(.*)$", dotenv, re.M)))
    loaded.require_keys()
    assert loaded.vault_public_key and not loaded.vault_private_key
    # the block's keygen line typed again (a reader repeating the setup): refused, .env untouched
    keygen_line = next(line for line in lines if "etl keygen" in line)
    again = subprocess.run(["bash", "-c", keygen_line], cwd=workdir, env=env, capture_output=True, text=True, timeout=9)
    assert again.returncode == 2 and "exists already" in again.stderr, again.stderr
    assert (workdir / ".env").read_text() == dotenv
