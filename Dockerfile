# syntax=docker/dockerfile:1
# A production-style image serving the Flask example with kamisama-serve.
#
#   docker build -t kamisama-example .
#   docker run --rm -p 8000:8000 -e WEB_CONCURRENCY=4 kamisama-example
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
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kamisama_server ./kamisama_server
# The server with uvloop, and Flask for the example app.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install ".[uvloop]" "flask>=3"

FROM python:3.11-slim
# PORT: the CLI binds 0.0.0.0:$PORT when it is set (and no --bind is given).
# WEB_CONCURRENCY: worker count; unset = the CPUs this process may run on,
#   which does not see a `--cpus` quota, so set it to match your CPU limit.
# KAMISAMA_TIMEOUT: the drain gets 8 s, inside `docker stop`'s default 10 s
#   before SIGKILL; raise both together (`docker stop -t`, stop_grace_period).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8000 \
    KAMISAMA_TIMEOUT=8
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv
# Owned by root, read-only for the app user.
COPY examples ./examples
USER app
EXPOSE 8000
STOPSIGNAL SIGTERM
CMD ["kamisama-serve", "examples.flask_app.app:app"]
