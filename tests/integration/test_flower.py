"""Flower never runs without its login, and every page it serves asks for it, metrics and health
included: a real Flower process started with COMMANDS["flower"], asked over HTTP."""

import base64
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ProcessGroup, pipeline_env, processes, wait_until

pytestmark = pytest.mark.integration

LOGINS = "ops:s3cret,second:pa:ss word"  # two logins; a password may hold ':' and spaces


def basic(login: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(login.encode()).decode()}


def status(port: int, path: str, headers: dict[str, str], method: str = "GET") -> int:
    """The HTTP status Flower answers with; 0 if nothing answers on the port."""
    data = b"" if method == "POST" else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=15) as r:  # noqa: S310  (http to our own Flower)
            return int(r.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


@pytest.fixture
def group(tmp_path: Path) -> Iterator[ProcessGroup]:
    """Processes with the test broker's environment and no FLOWER_BASIC_AUTH of the caller's."""
    env = pipeline_env("http://127.0.0.1:1/000000000000/unused", "http://127.0.0.1:1")
    env.pop("FLOWER_BASIC_AUTH", None)
    p = ProcessGroup(env=env, workdir=tmp_path)
    yield p
    p.stop()


@pytest.mark.parametrize(
    ("login", "says"),
    [
        (None, "FLOWER_BASIC_AUTH is not set"),
        ("ops-without-a-colon-s3cret", "FLOWER_BASIC_AUTH is malformed (the login has no ':'"),
        ("ops:s3cret,", "FLOWER_BASIC_AUTH is malformed (login 2 of 2"),
        (" ops:s3cret", "FLOWER_BASIC_AUTH is malformed (the login has whitespace"),
    ],
)
def test_flower_without_a_good_login_exits_with_one_line_and_serves_nothing(
    group: ProcessGroup, login: str | None, says: str
) -> None:
    port = processes.free_port()
    group.start("flower", FLOWER_PORT=str(port), **({"FLOWER_BASIC_AUTH": login} if login else {}))
    proc = group.procs["flower"]
    answered = []
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:  # it must never answer meanwhile
        if code := status(port, "/healthcheck", {}):
            answered.append(code)
            break
        time.sleep(0.1)
    assert not answered, f"Flower served /healthcheck ({answered}) instead of refusing to start"
    assert proc.poll() == 2
    lines = group.log("flower").splitlines()
    assert len(lines) == 1 and lines[0].startswith("etl flower: " + says), lines
    assert "set FLOWER_BASIC_AUTH=user:password" in lines[0]
    assert "Traceback" not in group.log("flower")
    assert not login or "s3cret" not in lines[0], "the message must not echo the login"
    assert status(port, "/", {}) == 0


def test_flower_refuses_logins_that_its_own_options_replace(group: ProcessGroup) -> None:
    """A --basic_auth argument (or a flowerconfig.py) must not swap FLOWER_BASIC_AUTH's logins."""
    port = processes.free_port()
    env = {**group.env, "FLOWER_BASIC_AUTH": "ops:s3cret", "FLOWER_PORT": str(port), "FLOWER_ADDRESS": "127.0.0.1"}
    proc = processes.spawn([*processes.celery_command("flower"), "--basic_auth=x:y"], env, group.log_path("flower"))
    try:
        assert proc.wait(60) == 2
    finally:
        processes.stop(proc)
    assert "basic auth is not FLOWER_BASIC_AUTH" in group.log("flower") and "Traceback" not in group.log("flower")
    assert status(port, "/", {}) == 0


def routes() -> list[tuple[str, str]]:
    """Every route Flower serves (one sample path each) with the methods its handler implements;
    static files, login/logout and the catch-all 404 excepted."""
    from flower.urls import handlers  # type: ignore[import-untyped]
    from tornado.web import RequestHandler

    out = []
    for spec in handlers:
        pattern, cls = (spec.regex.pattern, spec.handler_class) if hasattr(spec, "regex") else spec[:2]
        if pattern.startswith(("/static", "/login", "/logout", ".*")):
            continue
        path = re.sub(r"\(\.[+*]\)", "x", pattern).removesuffix("$").removesuffix("/?")
        out += [(m, path) for m in ("GET", "POST") if getattr(cls, m.lower()) is not getattr(RequestHandler, m.lower())]
    return out


def test_every_flower_page_metrics_and_health_included_asks_for_the_login(group: ProcessGroup) -> None:
    group.start("flower", FLOWER_BASIC_AUTH=LOGINS)
    port = group.flower_port
    wait_until(lambda: status(port, "/healthcheck", {}) != 0, 30, "Flower to answer")

    for path in ("/", "/api/workers", "/metrics", "/healthcheck"):
        assert status(port, path, {}) == 401, path
        assert status(port, path, basic("ops:wrong")) == 401, path
        assert status(port, path, basic("ops:s3cret")) == 200, path
        assert status(port, path, basic("second:pa:ss word")) == 200, path

    unguarded = [(m, p, code) for m, p in routes() if (code := status(port, p, {}, m)) != 401]
    assert len(routes()) > 20 and not unguarded, f"answered without the login: {unguarded}"
