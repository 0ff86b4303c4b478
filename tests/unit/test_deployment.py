"""docker-compose.yml and the Dockerfile run exactly what the local path runs."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from etl.demo import processes
from etl.demo.processes import COMMANDS

ROOT = Path(__file__).parents[2]


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.mark.parametrize("kind", sorted(COMMANDS))
def test_compose_runs_the_demo_commands(kind: str) -> None:
    assert compose()["services"][kind]["command"] == COMMANDS[kind]


def test_dockerfile_default_command_is_the_worker() -> None:
    cmd = re.search(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.M)
    assert cmd and json.loads(cmd.group(1)) == COMMANDS["worker"]


def test_compose_names_every_setting_of_env_example() -> None:
    example = (ROOT / ".env.example").read_text()
    names = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, re.M))
    env = compose()["services"]["worker"]["environment"]
    assert {"SQS_QUEUE_URL", "DATABASE_URL", "CELERY_BROKER_URL", "ETL_MASKING_KEY", "ETL_PAYLOAD_KEY"} <= set(env)
    assert {"SQS_QUEUE_URL", "DATABASE_URL", "CELERY_BROKER_URL", "ETL_MASKING_KEY", "ETL_PAYLOAD_KEY"} <= names


def test_settings_table_lists_every_env_example_setting() -> None:
    """docs/settings.md holds the full table (README "Settings" links to it and lists the first few)."""
    example = (ROOT / ".env.example").read_text()
    table = (ROOT / "docs" / "settings.md").read_text()
    names = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, re.M))
    assert names and all(f"| `{n}`" in table or f", `{n}`" in table for n in names)
    assert "docs/settings.md" in (ROOT / "README.md").read_text()


needs_compose = pytest.mark.skipif(
    not shutil.which("docker-compose"), reason="docker-compose (validator) not installed"
)


def compose_config(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` with only ``env``: an empty env file, so a developer's .env cannot interfere."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    return subprocess.run(
        ["docker-compose", "--env-file", str(empty), "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        env=env,
        capture_output=True,
        text=True,
    )


@needs_compose
def test_compose_file_validates(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ETL_MASKING_KEY": "k" * 40,
        "ETL_PAYLOAD_KEY": "p",
        "ETL_VAULT_PUBLIC_KEY": "v",
        "FLOWER_BASIC_AUTH": "a:b",
    }
    result = compose_config(tmp_path, env)
    assert result.returncode == 0, result.stderr


@needs_compose
def test_compose_refuses_to_start_without_keys(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETL_", "FLOWER_"))}
    result = compose_config(tmp_path, env)
    assert result.returncode != 0 and "etl keygen" in result.stderr


def test_make_installs_the_kinesis_mock_the_tests_start() -> None:
    tools = ROOT / "tools" / "kinesis-mock"
    wanted = json.loads((tools / "package.json").read_text())["dependencies"]["kinesis-local"]
    locked = json.loads((tools / "package-lock.json").read_text())["packages"]["node_modules/kinesis-local"]
    assert wanted == locked["version"] == processes.KINESIS_MOCK_VERSION, "an exact version, locked"
    assert locked["integrity"].startswith("sha512-")
    assert "npm ci --silent --ignore-scripts" in (ROOT / "Makefile").read_text()
    assert processes.KINESIS_MOCK.parts[-3:] == ("kinesis-mock", "node_modules", "kinesis-local")
