"""Who competes, on which app, and the exact command line of each.

A contender is a command template; placeholders: {bin} (the bench venv's bin/), {ours} (our
kamisama-serve), {app} (module:attr), {port}, {workers}. Our server is just two more entries
(WSGI and ASGI); when its command does not exist or does not serve, its rows are skipped with
the reason, and everything else runs.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = BENCH_DIR.parent
APPS_DIR = BENCH_DIR / "apps"
VENV_BIN = Path(sys.prefix) / "bin"


@dataclass(frozen=True)
class App:
    key: str
    target: str  # module:attr inside benchmarks/apps
    interface: str  # "wsgi" | "asgi"
    title: str


APPS: dict[str, App] = {
    a.key: a
    for a in (
        App("hello-wsgi", "hello_wsgi:app", "wsgi", "raw WSGI hello"),
        App("hello-asgi", "hello_asgi:app", "asgi", "raw ASGI hello"),
        App("flask", "flask_app:app", "wsgi", "Flask route"),
        App("fastapi", "fastapi_app:app", "asgi", "FastAPI route"),
        App("flask-sqlite", "flask_sqlite:app", "wsgi", "Flask-SQLite route"),
        App("django-sqlite", "django_sqlite:app", "wsgi", "Django-SQLite ORM view"),
    )
}


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    interface: str  # which apps it can serve: "wsgi" | "asgi" | "static"
    argv: tuple[str, ...]
    package: str  # distribution whose version is reported
    restart_signal: signal.Signals | None = None
    ours: bool = False
    preload: bool = False
    module: str | None = None  # an optional contender: skipped when this is not importable

    def command(self, app: App | None, port: int, workers: int) -> list[str]:
        values = {
            "bin": str(VENV_BIN),
            "ours": ours_command(),
            "app": app.target if app else "",
            "port": str(port),
            "workers": str(workers),
        }
        argv = [part.format(**values) for part in self.argv]
        if self.ours:
            argv += shlex.split(os.environ.get("KAMISAMA_BENCH_EXTRA", ""))
        return argv


def ours_command() -> str:
    """Our server's executable: $KAMISAMA_SERVE, else the bench venv's (the compiled
    build, installed by run.sh), else the repo's own .venv."""
    explicit = os.environ.get("KAMISAMA_SERVE")
    if explicit:
        return explicit
    for candidate in (VENV_BIN / "kamisama-serve", REPO_ROOT / ".venv" / "bin" / "kamisama-serve"):
        if candidate.exists():
            return str(candidate)
    return shutil.which("kamisama-serve") or "kamisama-serve"


# The template our server is plugged in with (see benchmarks/README.md).
# Access logs are off for everyone (the peers' default; ours logs by default).
OURS = (
    "{ours}",
    "{app}",
    "--workers",
    "{workers}",
    "--bind",
    "127.0.0.1:{port}",
    "--no-access-log",
)
GUNICORN = ("{bin}/gunicorn", "--workers", "{workers}", "--bind", "127.0.0.1:{port}")
GRANIAN = ("{bin}/granian", "--workers", "{workers}", "--host", "127.0.0.1", "--port", "{port}")
# bjoern has no pre-fork of its own: our launcher forks it (benchmarks/bjoern_prefork.py).
BJOERN = (
    "{bin}/python",
    str(BENCH_DIR / "bjoern_prefork.py"),
    "{app}",
    "--workers",
    "{workers}",
    "--port",
    "{port}",
)
SIGUSR1, SIGHUP = signal.SIGUSR1, signal.SIGHUP

CONTENDERS: dict[str, Contender] = {
    c.key: c
    for c in (
        Contender("us-wsgi", "kamisama WSGI", "wsgi", OURS, "kamisama-server", SIGUSR1, ours=True),
        Contender("us-asgi", "kamisama ASGI", "asgi", OURS, "kamisama-server", SIGUSR1, ours=True),
        Contender(
            "us-wsgi-preload",
            "kamisama WSGI --preload",
            "wsgi",
            (*OURS, "--preload"),
            "kamisama-server",
            SIGUSR1,
            ours=True,
            preload=True,
        ),
        Contender(
            "us-asgi-preload",
            "kamisama ASGI --preload",
            "asgi",
            (*OURS, "--preload"),
            "kamisama-server",
            SIGUSR1,
            ours=True,
            preload=True,
        ),
        Contender(
            "gunicorn-sync", "gunicorn sync", "wsgi", (*GUNICORN, "{app}"), "gunicorn", SIGHUP
        ),
        Contender(
            "gunicorn-sync-preload",
            "gunicorn sync --preload",
            "wsgi",
            (*GUNICORN, "--preload", "{app}"),
            "gunicorn",
            SIGHUP,
            preload=True,
        ),
        Contender(
            "gunicorn-gthread",
            "gunicorn gthread (4 threads)",
            "wsgi",
            (*GUNICORN, "--worker-class", "gthread", "--threads", "4", "{app}"),
            "gunicorn",
            SIGHUP,
        ),
        Contender(
            "gunicorn-uvicorn",
            "gunicorn + UvicornWorker",
            "asgi",
            (*GUNICORN, "--worker-class", "uvicorn_worker.UvicornWorker", "{app}"),
            "uvicorn-worker",
            SIGHUP,
        ),
        Contender(
            "gunicorn-uvicorn-preload",
            "gunicorn + UvicornWorker --preload",
            "asgi",
            (*GUNICORN, "--worker-class", "uvicorn_worker.UvicornWorker", "--preload", "{app}"),
            "uvicorn-worker",
            SIGHUP,
            preload=True,
        ),
        Contender(
            "uvicorn",
            "uvicorn --workers",
            "asgi",
            (
                "{bin}/uvicorn",
                "--workers",
                "{workers}",
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
                "--no-access-log",
                "--log-level",
                "warning",
                "{app}",
            ),
            "uvicorn",
            SIGHUP,
        ),
        Contender(
            "granian-wsgi",
            "granian WSGI",
            "wsgi",
            (*GRANIAN, "--interface", "wsgi", "{app}"),
            "granian",
            SIGHUP,
        ),
        Contender(
            "granian-asgi",
            "granian ASGI",
            "asgi",
            (*GRANIAN, "--interface", "asgi", "{app}"),
            "granian",
            SIGHUP,
        ),
        Contender(
            "hypercorn",
            "hypercorn (uvloop)",
            "asgi",
            (
                "{bin}/hypercorn",
                "--workers",
                "{workers}",
                "--bind",
                "127.0.0.1:{port}",
                "--worker-class",
                "uvloop",
                "{app}",
            ),
            "hypercorn",
            SIGHUP,
        ),
        Contender(
            "bjoern",
            "bjoern (reuseport launcher)",
            "wsgi",
            BJOERN,
            "bjoern-binary",
            module="bjoern",
        ),
    )
}

# Which contenders run which app in the throughput matrix (order = table order).
WSGI_ROW = ("us-wsgi", "gunicorn-sync", "gunicorn-gthread", "granian-wsgi", "bjoern")
ASGI_ROW = ("us-asgi", "uvicorn", "gunicorn-uvicorn", "granian-asgi", "hypercorn")
THROUGHPUT: dict[str, tuple[str, ...]] = {
    "hello-wsgi": WSGI_ROW,
    "hello-asgi": ASGI_ROW,
    "flask": WSGI_ROW,
    "fastapi": ASGI_ROW,
    "flask-sqlite": WSGI_ROW,
    "django-sqlite": WSGI_ROW,
}

# The peer each app's ratios are taken against ("best" = the fastest peer in this run).
THROUGHPUT_REFERENCE: dict[str, str] = {
    "hello-wsgi": "granian-wsgi",
    "hello-asgi": "uvicorn",
    "flask": "best",
    "fastapi": "best",
    "flask-sqlite": "best",
    "django-sqlite": "best",
}

# Startup and memory, 4 workers: a real framework app, so --preload has something to share.
STARTUP: dict[str, tuple[str, ...]] = {
    "flask": (
        "us-wsgi",
        "us-wsgi-preload",
        "gunicorn-sync",
        "gunicorn-sync-preload",
        "granian-wsgi",
    ),
    "fastapi": (
        "us-asgi",
        "us-asgi-preload",
        "uvicorn",
        "gunicorn-uvicorn",
        "gunicorn-uvicorn-preload",
        "granian-asgi",
        "hypercorn",
    ),
}
STARTUP_REFERENCES: dict[str, tuple[str, ...]] = {
    "flask": ("gunicorn-sync",),
    "fastapi": ("gunicorn-uvicorn", "uvicorn"),
}

# Requests lost on SIGTERM / rolling restart: each contender on its raw hello app's /slow.
LOSS: tuple[str, ...] = (
    "us-wsgi",
    "us-asgi",
    "gunicorn-sync",
    "gunicorn-gthread",
    "gunicorn-uvicorn",
    "uvicorn",
    "granian-wsgi",
    "granian-asgi",
    "hypercorn",
)
LOSS_APP = {"wsgi": "hello-wsgi", "asgi": "hello-asgi"}

# Balance: every server, each on its raw hello app's /pid, with these worker counts.
BALANCE: tuple[str, ...] = (*LOSS, "bjoern")
BALANCE_WORKERS: tuple[int, ...] = (2, 4)
