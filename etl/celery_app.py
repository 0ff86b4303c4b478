"""Builds the Celery app from the top-level celeryconfig module; no I/O at import."""

from celery import Celery

app = Celery("etl")
app.config_from_object("celeryconfig")
# Importing the task modules registers etl.fetch and etl.mask_and_write (SQS), and
# etl.fetch_stream and etl.mask_and_write_stream (Kinesis), with the app.
app.conf.imports = ("etl.tasks", "etl.stream_tasks")
