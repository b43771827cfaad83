# anomaly-worker image. CPU build by default; for CUDA pass a CUDA torch wheel index, e.g.
#   docker build --build-arg TORCH_INDEX_URL=<your PyTorch CUDA wheel index> -t anomaly-worker .
# Training runs from the same image:
#   docker run --entrypoint anomaly-train anomaly-worker fit --input /data/normal.npz --registry /models --promote --force

FROM python:3.11-slim AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
      pip install "torch==${TORCH_VERSION}" --index-url "$TORCH_INDEX_URL"; \
    else \
      pip install "torch==${TORCH_VERSION}"; \
    fi
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY training ./training
COPY demo ./demo
RUN pip install .

FROM python:3.11-slim
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ANOMALY_MODEL_PATH=/models \
    ANOMALY_METRICS_PORT=9108
USER 10001
WORKDIR /home/app
EXPOSE 9108
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ANOMALY_METRICS_PORT', '9108'), timeout=2)"]
ENTRYPOINT ["anomaly-worker"]
CMD ["run"]
