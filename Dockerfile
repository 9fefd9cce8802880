# syntax=docker/dockerfile:1
# A production-style image serving the Flask example with kamisama-serve.
# (Building and running it needs a Docker engine; README.md, "Docker", shows
# build, run, stop and the drain.)
#
#   docker build -t kamisama-example .
#   docker run --rm -p 8000:8000 --cpus 2 kamisama-example
#
# Serve your own app: copy it instead of examples/ and change the CMD's APP.
#
# PID 1: the exec-form CMD makes the kamisama master PID 1, so `docker stop`'s
# SIGTERM reaches it directly (no shell in between) and it drains its workers
# and exits 0. The kernel drops signals PID 1 has no handler for, but the master
# handles every signal it uses (SIGTERM, SIGINT, SIGHUP, SIGUSR1/2, SIGTTIN/OU).
# As PID 1 it also reaps orphaned grandchildren re-parented to it (apps that
# double-fork), so `--init` is not needed; it does no harm either.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A C compiler for the compiled build of the engine (mypyc, README "Speed"); it stays
# in this stage. Debian's current gcc: pinning its version breaks when the mirror moves.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# 1. The dependencies, in layers that only change with pyproject.toml: pip
#    installs them for a stub package (an empty kamisama_server and README),
#    then the stub goes. A code change does not reinstall any of them.
COPY pyproject.toml ./
RUN python -m venv /opt/venv \
 && mkdir kamisama_server \
 && touch kamisama_server/__init__.py README.md \
 && /opt/venv/bin/pip install "hatchling>=1.21" "hatch-mypyc>=0.16" "mypy>=1.10" \
      ".[uvloop]" "flask>=3" \
 && /opt/venv/bin/pip uninstall --yes kamisama-server \
 && rm -r kamisama_server README.md
# 2. The source: only the project itself is installed again (no download), as the
#    compiled build; the compiler's Python side then leaves the venv. (-I: the check
#    must import the installed package, not the sources in this working directory.)
COPY README.md ./
COPY kamisama_server ./kamisama_server
RUN HATCH_BUILD_HOOK_ENABLE_MYPYC=1 HATCH_BUILD_CLEAN_HOOKS_AFTER=1 \
    /opt/venv/bin/pip install --no-deps --no-build-isolation . \
 && /opt/venv/bin/python -I -c "from kamisama_server.version import engine_build as b; assert b() == 'compiled', b()" \
 && /opt/venv/bin/pip uninstall --yes hatch-mypyc mypy

FROM python:3.11-slim
# PORT: the CLI binds 0.0.0.0:$PORT when it is set (and no --bind is given).
# WEB_CONCURRENCY: worker count; unset = the CPUs this process may run on,
#   capped by the cgroup v2 CPU quota (`cpu.max`, which `docker run --cpus 2`
#   and a Kubernetes CPU limit set) rounded up. Under cgroup v1 no quota is
#   read: set WEB_CONCURRENCY to match the CPU limit there.
# KAMISAMA_TIMEOUT: the drain gets 8 s, inside `docker stop`'s default 10 s
#   before SIGKILL; raise both together (`docker stop -t`, stop_grace_period).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8000 \
    KAMISAMA_TIMEOUT=8
# A numeric USER: Kubernetes' runAsNonRoot can only check a number.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv
# Owned by root, read-only for the app user.
COPY examples ./examples
USER 10001:10001
EXPOSE 8000
STOPSIGNAL SIGTERM
# Healthy while a worker answers GET / on $PORT: Python's urllib, no curl in
# the image (urlopen raises, so the check fails, on a refused connection, a
# timeout or a status of 400 or more).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/' % os.environ.get('PORT', '8000'), timeout=2)"]
CMD ["kamisama-serve", "examples.flask_app.app:app"]
