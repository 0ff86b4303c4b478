"""`etl report`: the analysts' tables from the views, shared tokens first."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from etl import store
from etl.sources.sqs import queue as sqs
from tests.support import ProcessGroup, drained, wait_until

pytestmark = pytest.mark.integration


def test_report_shows_shared_tokens_and_writes_a_chart(
    pipeline: ProcessGroup, queue: sqs.Queue, conn: store.Connection, tmp_path: Path
) -> None:
    def ev(user: str, ip: str, dev: str, version: str, locale: str | None) -> str:
        return json.dumps(
            {
                "user_id": user,
                "device_type": "ios",
                "ip": ip,
                "device_id": dev,
                "app_version": version,
                "locale": locale,
            }
        )

    queue.send(
        [
            ev("alice", "203.0.113.5", "111-11-1111", "2.3.0", "GB"),
            ev("bob", "203.0.113.5", "111-11-1111", "10.0", "GB"),  # shares ip and device with alice
            ev("carol", "198.51.100.9", "111-11-1111", "2.3", None),  # shares the device too
            ev("dave", "192.0.2.1", "999-99-9999", "0.9", "RU"),
        ]
    )
    pipeline.start("worker", "beat")
    wait_until(drained(queue, conn, 4), 60, "the queue to drain")
    png = tmp_path / "per_day.png"
    out = subprocess.run(
        [sys.executable, "-m", "etl.ops.cli", "report", "--png", str(png)],
        env=pipeline.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    devices = text.split("Devices shared by several users")[1].split("IPs shared")[0]
    assert "k1:" in devices and " 3 " in devices  # one device token, three users
    ips = text.split("IPs shared by several users")[1].split("Logins per day")[0]
    assert " 2 " in ips
    versions = text.split("Logins per app version")[1].split("Top locales")[0]
    assert versions.index("10.0.0") < versions.index("2.3.0") < versions.index("0.9.0")  # newest first
    assert "(none)" in text.split("Top locales")[1]  # carol's null locale
    for raw in ("203.0.113.5", "111-11-1111", "198.51.100.9"):
        assert raw not in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
