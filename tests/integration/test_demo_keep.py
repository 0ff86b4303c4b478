"""`etl demo --keep`: the demo's servers stay up after the summary, with a DATABASE_URL that psql
(here psycopg2) can open; Ctrl-C stops everything; `--fresh` starts from an empty table.

The demo starts with SIGINT ignored, as a shell starts a background job (`etl demo --keep &`, or
any command under a CI script run in the background): Python then installs no Ctrl-C handler of
its own, and a SIGINT once stopped nothing (a fresh-clone CI run hung here for 120 s)."""

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psycopg2


def test_demo_keep_leaves_a_database_to_explore_and_fresh_starts_clean(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env["ETL_EMBEDDED"] = "always"
    demo = [sys.executable, "-m", "etl.ops.cli", "demo", "--keep", "--fresh", "--flower-port", "0", "--timeout", "120"]
    proc = subprocess.Popen(
        # as a background job starts: SIGINT ignored (`trap '' INT`), then the demo in the same process
        ["sh", "-c", 'trap "" INT; exec "$0" "$@"', *demo],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or []], daemon=True).start()
    seen = []
    try:
        while not seen or not seen[-1].startswith("DATABASE_URL="):
            seen.append(lines.get(timeout=240))
        url = seen[-1].strip().partition("=")[2]
        assert any("psql" in line and "$DATABASE_URL" in line for line in seen), "".join(seen)
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM user_logins")
            (rows,) = cur.fetchone()  # type: ignore[misc]
        assert rows == int(next(line.split()[1] for line in seen if line.startswith("rows ")))
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    assert code == 0, "".join(seen)
    assert "postgres: emptied (--fresh)" in "".join(seen)
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout
    assert leftovers == "", "a server or process of the demo is still running"
