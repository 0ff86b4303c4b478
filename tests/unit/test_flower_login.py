"""FLOWER_BASIC_AUTH as Flower's launcher checks it; workers never do."""

import subprocess
import sys

import pytest

from etl import settings
from etl.errors import ConfigError


@pytest.mark.parametrize(
    ("raw", "logins"),
    [("ops:s3cret", ("ops:s3cret",)), ("a:b,c:d", ("a:b", "c:d")), ("ops:pa:ss word", ("ops:pa:ss word",))],
)
def test_well_formed_logins_are_split_as_flower_splits_them(raw: str, logins: tuple[str, ...]) -> None:
    assert settings.load({"FLOWER_BASIC_AUTH": raw}).require_flower_logins() == logins


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("", "is not set"),
        ("ops-s3cret", "has no ':'"),
        (":s3cret", "empty user"),
        ("ops:", "empty password"),
        ("ops:s3cret,", "login 2 of 2 has no ':'"),
        ("ops:s3cret, op2:s3cret", "login 2 of 2 has whitespace"),
        ("o ps:s3cret", "whitespace"),
        ("ops:s3cret\n", "whitespace"),
        ("ops:s3\x1bcret", "control characters"),
    ],
)
def test_a_missing_or_malformed_login_is_refused_without_echoing_it(raw: str, says: str) -> None:
    with pytest.raises(ConfigError, match="FLOWER_BASIC_AUTH") as err:
        settings.load({"FLOWER_BASIC_AUTH": raw}).require_flower_logins()
    assert says in str(err.value) and "set FLOWER_BASIC_AUTH=user:password" in str(err.value)
    assert "s3" not in str(err.value)


def test_workers_load_settings_whatever_flower_basic_auth_holds() -> None:
    assert settings.load({"FLOWER_BASIC_AUTH": "not a login"}).flower_basic_auth == "not a login"
    assert "not a login" not in repr(settings.load({"FLOWER_BASIC_AUTH": "not a login"}))


def test_importing_etl_guards_nothing_only_the_launcher_does() -> None:
    code = (
        "import etl.worker.flower, etl.worker.celery; from flower.views import monitor; "
        "print(any(hasattr(getattr(monitor, n).get, 'etl_login_required') for n in ('Metrics', 'Healthcheck')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
