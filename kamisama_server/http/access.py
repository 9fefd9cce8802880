"""The access log line: gunicorn's ``%(x)s`` atoms, rendered only when the log is on.

Atoms (gunicorn's names): ``h`` client address, ``l`` and ``u`` "-", ``t`` time
``[30/Nov/2026:11:20:01 +0000]``, ``r`` request line, ``m`` method, ``U`` path,
``q`` query, ``H`` protocol, ``s`` status, ``B`` body bytes, ``b`` body bytes or
"-", ``f`` referer, ``a`` user agent, ``T`` seconds, ``M`` milliseconds, ``D``
microseconds, ``L`` decimal seconds, ``p`` worker pid, ``{name}i`` a request
header. Only the atoms the format names are computed, so a short format is a
cheap one.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from typing import Protocol

from .head import RequestHead

DEFAULT_ACCESS_FORMAT = '%(h)s %(t)s "%(r)s" %(s)s %(b)s %(L)ss "%(a)s"'
"""Who, when, what, status, size, duration (seconds), user agent."""

access_log = logging.getLogger("kamisama.access")

_ATOM = re.compile(r"%\((\{[^}]*\}i|[^)]*)\)")


class Answered(Protocol):
    """What an access line reads of a finished exchange."""

    head: RequestHead
    status: int
    sent: int  # response body bytes
    started: float  # time.perf_counter() when the request head was complete


Atom = Callable[[Answered, float], object]


def _header(name: bytes, exchange: Answered) -> str:
    for key, value in exchange.head.headers:
        if key == name:
            return value.decode("latin-1")
    return "-"


def _target(head: RequestHead) -> str:
    query = b"?" + head.query_string if head.query_string else b""
    return (head.raw_path + query).decode("latin-1")


class _Clock:
    """``[day/Mon/year:H:M:S zone]``, formatted once per second."""

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def __call__(self, _exchange: Answered, _elapsed: float) -> str:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.text = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(now))
        return self.text


_ATOMS: dict[str, Atom] = {
    "h": lambda e, _: e.head.client[0] if e.head.client else "-",
    "l": lambda e, _: "-",
    "u": lambda e, _: "-",
    "r": lambda e, _: f"{e.head.method} {_target(e.head)} HTTP/{e.head.http_version}",
    "m": lambda e, _: e.head.method,
    "U": lambda e, _: e.head.raw_path.decode("latin-1"),
    "q": lambda e, _: e.head.query_string.decode("latin-1"),
    "H": lambda e, _: f"HTTP/{e.head.http_version}",
    "s": lambda e, _: e.status,
    "B": lambda e, _: e.sent,
    "b": lambda e, _: e.sent or "-",
    "f": lambda e, _: _header(b"referer", e),
    "a": lambda e, _: _header(b"user-agent", e),
    "T": lambda _, elapsed: int(elapsed),
    "M": lambda _, elapsed: int(elapsed * 1e3),
    "D": lambda _, elapsed: int(elapsed * 1e6),
    "L": lambda _, elapsed: f"{elapsed:.6f}",
    "p": lambda _e, _: f"<{os.getpid()}>",
}


class AccessLog:
    """One worker's access log: the format, checked once, and the atoms it names."""

    def __init__(self, fmt: str = DEFAULT_ACCESS_FORMAT) -> None:
        self.fmt = fmt
        self.atoms: list[tuple[str, Atom]] = []
        for key in dict.fromkeys(_ATOM.findall(fmt)):
            if key.startswith("{") and key.endswith("}i"):
                name = key[1:-2].lower().encode("latin-1")
                self.atoms.append((key, lambda e, _, name=name: _header(name, e)))  # type: ignore[misc]
            elif key == "t":
                self.atoms.append((key, _Clock()))  # one clock per log: its own cache
            elif key in _ATOMS:
                self.atoms.append((key, _ATOMS[key]))
            else:
                raise ValueError(f"unknown access log atom %({key})s")
        try:
            fmt % {key: "" for key, _ in self.atoms}
        except (ValueError, TypeError, KeyError) as error:
            raise ValueError(f"bad access log format {fmt!r}: {error}") from None

    def line(self, exchange: Answered) -> str:
        elapsed = time.perf_counter() - exchange.started
        return self.fmt % {key: atom(exchange, elapsed) for key, atom in self.atoms}

    def log(self, exchange: Answered) -> None:
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(self.line(exchange))


def check_format(fmt: str) -> str:
    """For the CLI: ``fmt`` if it is a valid access log format, else ``ValueError``."""
    AccessLog(fmt)
    return fmt
