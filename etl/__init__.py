"""etl: SQS login events -> masked rows in Postgres, on Celery.

``celery -A etl worker`` and ``celery -A etl beat`` find the app here.
"""

from etl.celery_app import app

__all__ = ["app"]
