"""What operators run: the ``etl`` command, reports, health, seeding and the sample events."""
