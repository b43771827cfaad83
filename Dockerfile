# anomaly-worker image: the worker is the entrypoint; training runs from the same image.
#
#   docker build -t anomaly-worker .                          # CUDA (PyPI's torch wheel ships the
#                                                             # CUDA runtime; GPU used when present)
#   docker build --build-arg VARIANT=cpu -t anomaly-worker .  # CPU only, much smaller
#   docker run --entrypoint anomaly-train anomaly-worker fit --input /data/normal.npz \
#       --registry /models --promote --force
#
# Multi-stage: the build stage has pip's caches and build tools; the final stage has only the
# virtual environment, runs as a non-root user, and checks /healthz.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cuda
ARG TORCH_VERSION=2.13.0
ARG CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN if [ "$VARIANT" = "cpu" ]; then \
      pip install "torch==${TORCH_VERSION}" --index-url "$CPU_INDEX_URL"; \
    else \
      pip install "torch==${TORCH_VERSION}"; \
    fi
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY training ./training
COPY demo ./demo
# The project itself, with the librdkafka transport (ANOMALY_KAFKA_CLIENT=confluent) and
# Parquet input for training; its dependency ranges live in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install ".[confluent,parquet]"

FROM ${PYTHON_IMAGE}
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin app \
    && mkdir /models && chown 10001:10001 /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    ANOMALY_MODEL_PATH=/models \
    ANOMALY_METRICS_PORT=9108
USER 10001
WORKDIR /home/app
VOLUME ["/models"]
EXPOSE 9108
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ANOMALY_METRICS_PORT', '9108'), timeout=2)"]
ENTRYPOINT ["anomaly-worker"]
CMD ["run"]
