"""Celery settings only. Every line says why; values come from etl.settings.

Loaded by etl.worker.celery with ``app.config_from_object("celeryconfig")``, Celery's own default
name. It is installed as a top-level module (pyproject ``py-modules``), so the ``etl`` command
and ``celery -A etl`` find it from any working directory.
"""

from etl import settings as _settings

_s = _settings.load_or_exit()  # a bad setting: one line and exit 2, never a traceback

broker_url = _s.broker_url
# Keep retrying the broker at start-up instead of crashing while Redis comes up (compose, k8s).
broker_connection_retry_on_startup = True
# An unacked chunk (its worker died) returns to the broker after this long. SQS redelivers its
# messages anyway after SQS_VISIBILITY_TIMEOUT; this only has to be finite.
# body_encoding utf-8: kombu's Redis transport would base64 the task's JSON again (x4/3); a chunk
# is sealed, so already base64 text, and one layer is enough (issue 20: broker bytes per body byte
# <= 1.5). Messages published before keep their own encoding in their properties and still open.
broker_transport_options = {"visibility_timeout": 300, "body_encoding": "utf-8"}

# JSON only: pickle would let anyone who can write to Redis run code in the workers.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]

# No results: chunks report through logs and Postgres, and a result backend would only be one
# more place data could leak to.
task_ignore_result = True
result_backend = None

# Ack after the task finished, and give a chunk back if its worker process dies: a chunk is
# never lost to a crash (and replaying it is harmless, writes are idempotent on message id).
task_acks_late = True
task_reject_on_worker_lost = True
# One chunk at a time per process: a long-running chunk never holds others hostage.
worker_prefetch_multiplier = 1
# If the broker connection drops, stop running tasks whose ack can no longer be delivered
# (they will be redelivered) instead of finishing them twice.
worker_cancel_long_running_tasks_on_connection_loss = True

# A chunk that hangs is killed well before its messages' SQS visibility timeout runs out.
task_soft_time_limit = _settings.CHUNK_SOFT_TIME_LIMIT
task_time_limit = _settings.CHUNK_TIME_LIMIT

task_default_queue = "etl"
# Task events let Flower show progress; every task carries a PII-free argsrepr.
worker_send_task_events = True
task_send_sent_event = True
# Replace long-lived processes now and then to bound memory growth.
worker_max_tasks_per_child = 10_000

# Where beat remembers when it last ran each entry (a local file; a stale one is harmless).
beat_schedule_filename = _s.beat_schedule_file
# One source per deployment (ETL_SOURCE): SQS messages, or Kinesis stream records.
beat_schedule = {
    f"fetch-{_s.source}": {
        "task": "etl.fetch_stream" if _s.source == "kinesis" else "etl.fetch",
        "schedule": _s.fetch_interval,
        # A fetch that could not start in time is pointless: the next one is coming.
        "options": {"expires": _s.fetch_interval},
    }
}
