# syntax=docker/dockerfile:1
# The CPU services: planner, worker, relay, webhooks, reconciler, the results API and the
# `skyeye` CLI (the migration Job runs `skyeye db migrate` from this image).
#
#   docker build -f docker/services.Dockerfile -t skyeye-services:0.1.0 .
#
# The context is the repository root (.dockerignore keeps it to the sources and the pins).
# Base images are pinned by tag; pin them by digest as well in your registry mirror.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG NODE_IMAGE=node:22.21.1-bookworm-slim

# --- the dashboard's static files (web/ -> services/api/dashboard_static, git-ignored) ---
FROM ${NODE_IMAGE} AS dashboard
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY web/build.mjs ./
COPY web/src ./src
RUN npm run --silent build

# --- the virtual environment, built with the project's pins ---
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/skyeye
WORKDIR /src
# torch first, from PyTorch's CPU index: the services never run the model (Ray Serve does), and
# PyPI's Linux torch would pull in gigabytes of CUDA. The version matches constraints.txt.
RUN /opt/skyeye/bin/pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml constraints.txt README.md ./
COPY shared ./shared
COPY services ./services
COPY --from=dashboard /src/services/api/dashboard_static ./services/api/dashboard_static
RUN /opt/skyeye/bin/pip install -c constraints.txt .

# --- the runtime: the venv only, a non-root user, nothing writable but the mounted /tmp ---
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
# the repository's URL, as CI knows it (docker build --build-arg SOURCE=...)
ARG SOURCE=""
LABEL org.opencontainers.image.title="skyeye-services" \
      org.opencontainers.image.description="SkyEye Stream CPU services: planner, worker, relay, webhooks, reconciler, results API" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
# uid 10001 with group 0 so that a platform that picks its own uid (OpenShift) still works
RUN useradd --system --uid 10001 --gid 0 --home-dir /tmp --no-create-home skyeye
COPY --from=build /opt/skyeye /opt/skyeye
# SKYEYE_HOME and the caches under /tmp: the root filesystem is read-only in the chart
ENV PATH=/opt/skyeye/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SKYEYE_HOME=/tmp/skyeye \
    HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1
USER 10001
WORKDIR /tmp
# 8080: the results API; 9464: each service's /healthz, /readyz and /metrics
EXPOSE 8080 9464
# the chart and the compose file name the service; the API is the default
CMD ["python", "-m", "skyeye.services.api"]
