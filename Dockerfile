# syntax=docker/dockerfile:1
#
# The rollbackd container image.
#
#   docker build -t rollbackd:0.1.0 .
#   docker run --rm -p 8080:8080 \
#       -v "$PWD/rollbackd.yaml:/etc/rollbackd/rollbackd.yaml:ro" rollbackd:0.1.0
#
# The image runs `rollbackd run` as the unprivileged user 10001 (numeric, so that Kubernetes'
# runAsNonRoot can check it). It reads its configuration from $ROLLBACKD_CONFIG
# (/etc/rollbackd/rollbackd.yaml, mounted read-only) and keeps its state (the SQLite store) under
# /var/lib/rollbackd, the only directory it writes besides /tmp. Nothing else needs to be
# writable: the root filesystem can be mounted read-only. The Helm chart in helm/rollbackd runs it
# exactly so; tests/test_dockerfile.py keeps the two in step.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: compile whatever has no wheel, install rollbackd into a virtual environment --------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A compiler only for dependencies without a prebuilt wheel on the build platform; it stays in
# this stage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/rollbackd

WORKDIR /src
COPY pyproject.toml README.md ./
COPY rollbackd ./rollbackd
# A regular (not editable) install: the venv holds rollbackd and its dependencies, compiled to
# bytecode now, since the running container cannot write __pycache__ directories. The image runs
# Python with PYTHONOPTIMIZE=2 (below), which reads its own bytecode files (*.opt-2.pyc): compile
# them too, or every start would compile the sources in memory.
RUN /opt/rollbackd/bin/pip install . \
    && /opt/rollbackd/bin/python -OO -m compileall -q /opt/rollbackd/lib \
    && PYTHONOPTIMIZE=2 /opt/rollbackd/bin/rollbackd --version

# --- runtime: the interpreter, the virtual environment, nothing to build with -----------------
FROM ${PYTHON_IMAGE} AS runtime

ARG ROLLBACKD_UID=10001
ARG ROLLBACKD_GID=10001

LABEL org.opencontainers.image.title="rollbackd" \
      org.opencontainers.image.description="Makes bad releases undo themselves: watches canary, blue-green and Deployment releases, decides by the rollback runbook, rolls back, verifies, and tells everyone." \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid "${ROLLBACKD_GID}" rollbackd \
    && useradd --system --uid "${ROLLBACKD_UID}" --gid "${ROLLBACKD_GID}" \
        --home-dir /var/lib/rollbackd --no-create-home --shell /usr/sbin/nologin rollbackd \
    && install -d -m 0755 /etc/rollbackd \
    && install -d -m 0750 -o "${ROLLBACKD_UID}" -g "${ROLLBACKD_GID}" /var/lib/rollbackd

COPY --from=build /opt/rollbackd /opt/rollbackd

# PYTHONOPTIMIZE=2 leaves docstrings out of memory: the Kubernetes client alone carries 12 MiB of
# them. rollbackd's asserts only narrow types; its checks are explicit and stay.
ENV PATH=/opt/rollbackd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONOPTIMIZE=2 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/rollbackd \
    ROLLBACKD_CONFIG=/etc/rollbackd/rollbackd.yaml

WORKDIR /var/lib/rollbackd
VOLUME ["/var/lib/rollbackd"]

# /healthz, /readyz, /metrics, the API and the status page (config: http.port).
EXPOSE 8080

USER 10001:10001

# The daemon is PID 1: it handles SIGTERM itself (graceful, bounded shutdown) and starts no
# children. Any other subcommand runs in its place: `docker run IMAGE check-config FILE`.
ENTRYPOINT ["rollbackd"]
CMD ["run"]
