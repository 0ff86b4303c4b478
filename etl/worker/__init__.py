"""The Celery side: the app (``celery -A etl.worker``), the chunk base both sources' tasks share,
thin tasks, per-process runtime, coordination in Redis, metrics."""
