"""Where kamisama's lines go: the ``kamisama`` logger tree, one ``write`` per line.

Every line the library and the server write is a ``logging`` record under
``kamisama`` (``kamisama.master``, ``kamisama.worker``, ``kamisama.access``,
``kamisama.http``, ``kamisama.wsgi``, ``kamisama.lifespan``), so a user's
logging config can restyle, filter or silence any of them.

Why a handler of our own: ``print`` and ``StreamHandler`` may split one line
into several ``write`` calls (text, then newline, under ``PYTHONUNBUFFERED``),
and workers writing to the same pipe at once then merge their lines. One
``os.write`` per line is atomic on a pipe up to ``PIPE_BUF`` (4096 bytes).

Why never the root logger: an app (Django, or one calling ``basicConfig``)
configures root itself; handlers of ours there would print its lines twice.
Ours sit on ``kamisama`` with ``propagate=False``.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os

from kamisama_server.worker import worker_id

TREE = "kamisama"
LINE_FORMAT = "%(asctime)s %(levelname)s [kamisama] %(message)s"
"""The default: time and level, and the ``[kamisama]`` tag people grep for."""


def write_line(fd: int, line: str) -> None:
    """Write ``line`` and its newline to ``fd`` in one ``os.write`` (then the rest, if
    the system took only part of a long line)."""
    view = memoryview((line + "\n").encode("utf-8", "backslashreplace"))
    for _ in range(len(view)):
        view = view[os.write(fd, view) :]
        if not view:
            return


class LineHandler(logging.Handler):
    """Formats the whole record, then writes it to ``fd`` with one ``os.write``."""

    def __init__(self, fd: int, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            write_line(self.fd, self.format(record))
        except Exception:
            self.handleError(record)


def line_formatter(fmt: str = LINE_FORMAT) -> logging.Formatter:
    formatter = logging.Formatter(fmt)
    formatter.default_msec_format = "%s.%03d"
    return formatter


def ensure_default_handler() -> None:
    """The library's default: when nobody configured logging, ``kamisama`` lines still
    reach stderr, with time and level; a library never calls ``basicConfig``.

    Does nothing if the ``kamisama`` logger or root already has a handler.
    """
    tree = logging.getLogger(TREE)
    if tree.handlers or logging.getLogger().handlers:
        return
    _attach(tree, LineHandler(2), LINE_FORMAT)
    if tree.level == logging.NOTSET:
        tree.setLevel(logging.INFO)


def _attach(logger: logging.Logger, handler: logging.Handler, fmt: str) -> None:
    handler.setFormatter(line_formatter(fmt))
    logger.addHandler(handler)
    logger.propagate = False


def configure_server(level: str, config_file: str | None = None) -> None:
    """The server's logging, done once in the master before anything is logged.

    ``config_file`` (dictConfig as JSON, or an ``.ini`` for ``fileConfig``)
    replaces our setup entirely; ``level`` then does not apply. Otherwise:
    ``kamisama`` lines on stderr, access lines (already timestamped) on stdout.
    Raises ``ValueError`` naming what is wrong with the file.
    """
    if config_file:
        load_config_file(config_file)
    else:
        tree = logging.getLogger(TREE)
        access = logging.getLogger(f"{TREE}.access")
        for logger in (tree, access):  # ours only: filters others added stay
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
        _attach(tree, LineHandler(2), LINE_FORMAT)
        tree.setLevel(level.upper())
        _attach(access, LineHandler(1), "%(message)s")
    _adopt_uvicorn()


def load_config_file(path: str) -> None:
    """``.ini``/``.conf``: ``fileConfig``; anything else: JSON for ``dictConfig``.

    Loggers that exist already (ours) stay enabled unless the file says otherwise.
    """
    try:
        if path.endswith((".ini", ".conf", ".cfg")):
            logging.config.fileConfig(path, disable_existing_loggers=False)
            return
        with open(path, encoding="utf-8") as file:
            config = json.load(file)
        if not isinstance(config, dict):
            raise ValueError("expected a JSON object (a logging.config.dictConfig schema)")
        config.setdefault("version", 1)
        config.setdefault("disable_existing_loggers", False)
        logging.config.dictConfig(config)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, ImportError) as error:
        raise ValueError(f"--log-config {path}: {error}") from None


class _FromUvicorn(logging.Handler):
    """uvicorn's lifespan and WebSocket code log to ``uvicorn.error``: re-emit those
    records under ``kamisama.lifespan``/``kamisama.websocket``.

    Lifespan INFO chatter ("Waiting for application startup.") would repeat once
    per worker: only worker 1 (and the master) keep it at INFO, others say it at DEBUG.
    """

    def emit(self, record: logging.LogRecord) -> None:
        lifespan = "lifespan" in record.pathname
        record.name = f"{TREE}.lifespan" if lifespan else f"{TREE}.websocket"
        if lifespan and record.levelno == logging.INFO and worker_id() not in (None, 1):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        target = logging.getLogger(record.name)
        if target.isEnabledFor(record.levelno):
            target.handle(record)


def _adopt_uvicorn() -> None:
    """Route ``uvicorn.error`` into our tree, unless a log config gave it handlers."""
    uvicorn = logging.getLogger("uvicorn.error")
    if uvicorn.handlers:
        return
    uvicorn.addHandler(_FromUvicorn())
    # INFO records must be made (worker 2's lifespan lines become DEBUG); ours decide.
    uvicorn.setLevel(min(logging.INFO, logging.getLogger(TREE).getEffectiveLevel()))
    uvicorn.propagate = False
