"""Importing changes nothing: the package and its pure modules load no driver or framework, and
the worker's modules patch nothing, read no settings and make no directory until a worker starts.

Each check runs in a fresh interpreter: this test process has long since imported everything.
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("celery", "kombu", "psycopg2", "boto3", "botocore", "redis", "prometheus_client")
PURE = sorted(
    ["etl", "etl.settings", "etl.errors", "etl.logs", "etl.progress"]
    + [f"etl.{wing}.{p.stem}" for wing in ("model", "crypto") for p in (ROOT / "etl" / wing).glob("[!_]*.py")]
)


def run(code: str, env: dict[str, str] | None = None) -> object:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_etl_and_its_pure_modules_loads_no_driver_or_framework() -> None:
    assert {"etl.model.records", "etl.crypto.vault", "etl.model.shards", "etl.crypto.masking"} <= set(PURE)
    loaded = run(
        f"import importlib, json, sys\n"
        f"for name in {PURE!r}: importlib.import_module(name)\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    assert loaded == []


def test_importing_the_worker_patches_nothing_reads_no_settings_makes_no_directory(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    env = {"PATH": "/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "ETL_CHUNK_SIZE": "not a number"}
    state = run(
        "import json, sys\n"
        "import etl.worker.celery, etl.worker.tasks, etl.worker.stream_tasks, etl.worker.metrics\n"
        "from kombu.transport import redis\n"
        "import gc\n"
        "print(json.dumps({'patched': hasattr(redis.QoS.restore_unacked, 'etl_survives_broker_loss'),\n"
        "                  'gc': [gc.get_threshold()[0], gc.get_freeze_count()],\n"
        "                  'celeryconfig': 'celeryconfig' in sys.modules}))",
        env=env,
    )
    # A malformed setting would have raised at import had anything read the settings.
    assert state == {"patched": False, "gc": [700, 0], "celeryconfig": False}
    assert not metrics_dir.exists()


def test_a_starting_worker_applies_the_kombu_patch_once() -> None:
    state = run(
        "import json\n"
        "from celery.signals import worker_init\n"
        "from kombu.transport import redis\n"
        "import etl.worker.celery\n"
        "original = redis.QoS.restore_unacked\n"
        "worker_init.send(sender=None)\n"
        "patched = redis.QoS.restore_unacked\n"
        "worker_init.send(sender=None)\n"
        "print(json.dumps([patched is not original, redis.QoS.restore_unacked is patched,\n"
        "                  patched.__wrapped__ is original]))"
    )
    assert state == [True, True, True]


def test_a_starting_worker_and_each_pool_process_tune_the_garbage_collector() -> None:
    """worker_init (before the pool forks) and worker_process_init (in each pool process) raise
    the young-generation threshold and freeze what start-up made; the other thresholds stay."""
    state = run(
        "import gc, json\n"
        "from celery.signals import worker_init, worker_process_init\n"
        "import etl.worker.celery\n"
        "before = [list(gc.get_threshold()), gc.get_freeze_count()]\n"
        "worker_init.send(sender=None)\n"
        "after_init = [list(gc.get_threshold()), gc.get_freeze_count()]\n"
        "made = [[i] for i in range(1000)]\n"
        "worker_process_init.send(sender=None)\n"
        "print(json.dumps([before, after_init, [list(gc.get_threshold()), gc.get_freeze_count()]]))"
    )
    (t0, frozen0), (t1, frozen1), (t2, frozen2) = state  # type: ignore[misc]
    assert t0 == [700, 10, 10] and frozen0 == 0
    assert t1 == t2 == [10_000, 10, 10]
    assert frozen1 > 10_000  # modules, Celery's app and our tasks
    assert frozen2 >= frozen1 + 1000  # what the process made after worker_init


def test_a_task_attempt_that_did_not_succeed_frees_the_cycles_it_left() -> None:
    """A traceback's reference cycle (holding its attempt's chunk) is collected after the attempt,
    not 10,000 containers later; after a success nothing extra is collected."""
    state = run(
        "import gc, json, weakref\n"
        "from celery.signals import task_postrun, worker_init\n"
        "import etl.worker.celery\n"
        "worker_init.send(sender=None)\n"
        "class Chunk: pass\n"
        "def attempt():\n"
        "    chunk = Chunk(); chunk.data = b'x' * 262144\n"
        "    try:\n"
        "        raise RuntimeError('postgres down')\n"
        "    except RuntimeError as exc:\n"
        "        chunk.error = exc  # exc -> traceback -> frame -> chunk -> exc\n"
        "    return weakref.ref(chunk)\n"
        "alive = []\n"
        "for state in ('SUCCESS', 'RETRY', 'FAILURE'):\n"
        "    ref = attempt()\n"
        "    task_postrun.send(sender=None, task_id='t', state=state)\n"
        "    alive.append(ref() is not None)\n"
        "print(json.dumps(alive))"
    )
    assert state == [True, False, False]
