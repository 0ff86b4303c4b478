"""Builds the Celery app from the top-level celeryconfig module; no I/O at import."""

from celery import Celery

app = Celery("etl")
app.config_from_object("celeryconfig")
# Importing the tasks module registers etl.fetch and etl.mask_and_write with the app.
app.conf.imports = ("etl.tasks",)
