# shadowtrial: one image runs `serve` (proxy + admin API) or `worker`.
# Multi-stage: build a wheel and its dependencies in a builder, copy only the venv.

FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY common ./common
COPY proxy ./proxy
COPY analysis ./analysis
COPY shadowtrial ./shadowtrial
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install .

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 shadowtrial \
 && useradd --system --uid 10001 --gid shadowtrial --home-dir /app --create-home shadowtrial
COPY --from=builder /opt/venv /opt/venv
COPY deploy/config/shadowtrial.toml /etc/shadowtrial/shadowtrial.toml
USER shadowtrial
WORKDIR /app
# Data port and admin port (admin_listen must bind 0.0.0.0 inside a container).
EXPOSE 8080 9901
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["shadowtrial"]
CMD ["serve", "-c", "/etc/shadowtrial/shadowtrial.toml"]
