# One image for worker, beat, Flower and the etl command (compose changes only `command`).
FROM python:3.11.7-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements.txt ./
RUN python -m venv /opt/etl && /opt/etl/bin/pip install -r requirements.txt
COPY pyproject.toml ./
COPY etl ./etl
RUN /opt/etl/bin/pip install --no-deps .

FROM python:3.11.7-slim-bookworm
ENV PATH=/opt/etl/bin:$PATH PYTHONUNBUFFERED=1 ETL_BEAT_SCHEDULE_FILE=/tmp/celerybeat-schedule
COPY --from=build /opt/etl /opt/etl
RUN useradd --system --uid 10001 --no-create-home etl
USER etl
WORKDIR /tmp
# Judges a worker (the default command); compose and k8s turn it off for beat and Flower.
HEALTHCHECK --interval=60s --timeout=15s --start-period=60s --retries=2 \
    CMD etl health --node "celery@$HOSTNAME" || exit 1
EXPOSE 9808
CMD ["celery", "-A", "etl", "worker", "--loglevel=INFO", "--concurrency=2"]
