# One image for worker, beat, Flower and the etl command (compose changes only `command`).
# tests/unit/test_image.py replays the build stage's COPY and pip install steps (no Docker engine needed)
# and tests/unit/test_manifests.py lints this file with hadolint: `make test` fails if either would.
FROM python:3.11.7-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements.txt ./
RUN python -m venv /opt/etl && /opt/etl/bin/pip install -r requirements.txt
# Everything pyproject.toml packages: the etl package (every wing under it) and the top-level celeryconfig module.
COPY pyproject.toml celeryconfig.py ./
COPY etl ./etl
RUN /opt/etl/bin/pip install --no-deps .

FROM python:3.11.7-slim-bookworm
# Each worker container leaves its pool processes' metric samples in its own /tmp (etl/worker/metrics.py).
ENV PATH=/opt/etl/bin:$PATH PYTHONUNBUFFERED=1 ETL_BEAT_SCHEDULE_FILE=/tmp/celerybeat-schedule \
    PROMETHEUS_MULTIPROC_DIR=/tmp/etl-metrics
COPY --from=build /opt/etl /opt/etl
RUN useradd --system --uid 10001 --no-create-home etl
# Numeric, so Kubernetes' runAsNonRoot can verify it (the manifests also set runAsUser: 10001).
USER 10001
WORKDIR /tmp
# Judges a worker (the default command); compose and k8s turn it off for beat and Flower.
HEALTHCHECK --interval=60s --timeout=15s --start-period=60s --retries=2 \
    CMD ["sh", "-c", "etl health --node \"celery@$HOSTNAME\" || exit 1"]
EXPOSE 9808
CMD ["celery", "-A", "etl.worker", "worker", "--loglevel=INFO", "--concurrency=2"]
