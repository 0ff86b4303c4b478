"""Builds the Celery app from etl.celeryconfig; no I/O at import."""

from celery import Celery

app = Celery("etl")
app.config_from_object("etl.celeryconfig")
# Importing the tasks module registers etl.fetch and etl.mask_and_write with the app.
app.conf.imports = ("etl.tasks",)
