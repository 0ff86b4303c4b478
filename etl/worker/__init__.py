"""The Celery side: the app (``celery -A etl.worker``), thin tasks, per-process runtime,
coordination in Redis, metrics."""
