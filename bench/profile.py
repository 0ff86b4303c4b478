"""Where the pipeline's CPU goes: py-spy samples of the worker tree and beat, sorted into stages.

Each on-CPU sample's stack is read from the innermost frame outwards and counted for the first
stage one of its frames belongs to (so hmac under the SigV4 signer counts as the SQS client, and
hmac under the masker as masking); samples that match no stage are "other".
"""

import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

# (stage, path fragments of its frames), checked in this order for each frame
STAGES: list[tuple[str, tuple[str, ...]]] = [
    (
        "SQS client",
        (
            "etl/sources/sqs/queue.py",
            "etl/wire/lean.py",
            "etl/wire/sigv4.py",
            "etl/wire/http1.py",
            "/botocore/",
            "/boto3/",
            "/urllib3/",
            "/http/client.py",
            "/ssl.py",
        ),
    ),
    ("sealing", ("etl/crypto/sealing.py",)),
    ("masking", ("etl/crypto/masking.py",)),
    ("vault", ("etl/crypto/vault.py", "etl/pii/service.py")),
    ("parse + rows", ("etl/model/events.py", "etl/model/records.py", "etl/model/appversion.py")),
    ("Postgres client", ("/psycopg2/", "etl/store/")),
    (
        "Celery/kombu",
        (
            "/celery/",
            "/kombu/",
            "/billiard/",
            "/redis/",
            "/vine/",
            "/amqp/",
            "etl/worker/tasks.py",
            "etl/worker/chunks.py",
            "etl/worker/coordination.py",
        ),
    ),
]
ORDER = [name for name, _ in STAGES] + ["other"]
# Innermost frames of a thread blocked in a wait (socket read, selector, lock, queue). py-spy
# counts a thread as active while the OS has it runnable, and on a machine with more runnable
# threads than cores a thread just woken from such a wait is runnable long before it runs: those
# samples measure the run queue, not our CPU, and are left out (their share is reported).
WAITS = (
    "_more (",
    "read_response (",
    "select (",
    "poll (",
    "wait (",
    "_worker (",
    "_read_from_socket (",
    "_recv (",
    "recv (",
)


def stage_of(stack: list[str]) -> str:
    if any(w in stack[-1] for w in WAITS):
        return "waiting"
    for frame in reversed(stack):  # innermost first
        # py-spy names a site-packages file from its package ("(celery/app/trace.py:798)"):
        # a slash after the parenthesis lets "/celery/" match it as it matches a full path
        path = frame.replace(" (", " (/", 1)
        for name, fragments in STAGES:
            if any(f in path for f in fragments):
                return name
    return "other"


def py_spy() -> str | None:
    return shutil.which("py-spy") or (
        str(Path(sys.executable).parent / "py-spy") if (Path(sys.executable).parent / "py-spy").exists() else None
    )


def record(pids: list[int], seconds: float, out_dir: Path, rate: int = 200) -> dict[str, float] | None:
    """Fractions of on-CPU samples per stage over ``seconds`` (None without py-spy)."""
    binary = py_spy()
    if binary is None:
        return None
    procs = []
    files = []
    for pid in pids:
        out = out_dir / f"profile-{pid}.txt"
        files.append(out)
        cmd = [binary, "record", "--pid", str(pid), "--subprocesses", "--duration", str(int(seconds))]
        cmd += ["--rate", str(rate), "--format", "raw", "--nonblocking", "-o", str(out)]
        with open(out_dir / f"py-spy-{pid}.log", "ab") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + seconds + 15
    for proc in procs:
        try:
            proc.wait(max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:  # py-spy writes what it has on SIGINT, as on Ctrl-C
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    counts: Counter[str] = Counter()
    for out in files:
        if not out.exists():
            continue
        for line in out.read_text(errors="replace").splitlines():
            stack, _, n = line.rpartition(" ")
            if stack and n.isdigit():
                counts[stage_of(stack.split(";"))] += int(n)
    total = sum(counts.values()) - counts["waiting"]
    if total <= 0:
        return None
    shares = {name: counts[name] / total for name in ORDER}
    shares["waiting (left out)"] = counts["waiting"] / (total + counts["waiting"])
    return shares
