"""systemd's notify protocol (``Type=notify``), without a dependency.

systemd tells a service where to report its state in ``NOTIFY_SOCKET``: a unix
datagram socket path, or ``@name`` for the abstract namespace. Each report is
one datagram of ``KEY=value`` lines (``READY=1``, ``STOPPING=1``, ...). Without
the variable every call is a no-op, so the server calls these unconditionally.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Mapping


def notify(*lines: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``lines`` as one datagram to ``NOTIFY_SOCKET``; False if not under systemd."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall("\n".join(lines).encode("utf-8"))
        return True
    return False


def ready(status: str) -> None:
    """Every worker accepts (first start, or the end of a rolling restart)."""
    notify("READY=1", f"STATUS={status}")


def reloading() -> None:
    """A rolling restart began; systemd wants the monotonic time with it (v253+)."""
    notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def stopping() -> None:
    """The graceful shutdown began."""
    notify("STOPPING=1", "STATUS=shutting down")
