"""etl: SQS or Kinesis login events -> masked rows in Postgres, on Celery.

Importing this package loads nothing: the Celery app lives in etl.worker (``celery -A etl.worker
worker``), the ``etl`` command in etl.ops.cli. docs/NOTES.md has the map of the wings.
"""
