"""bjoern with N pre-forked workers, for the benchmark (bjoern has no pre-fork of its own).

    python bjoern_prefork.py MODULE:APP --workers 2 --port 8000 [--socket reuseport|shared]

The master binds the listening sockets, forks the workers, and each imports the app itself
(after the fork, like gunicorn without --preload) and runs bjoern's loop on its socket.
`reuseport` (the default, bjoern's documented way to run several bjoerns): one SO_REUSEPORT
socket per worker, the kernel spreads connections. `shared`: one socket for all, where
bjoern's accept loop lets one worker take most of a burst. SIGTERM or SIGINT to the master
kills the workers; a worker that dies ends the run (no respawn: a benchmark wants to see it).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import bjoern

_PR_SET_PDEATHSIG = 1


def _load(target: str) -> Callable[..., Any]:
    module, _, attr = target.partition(":")
    found: Any = importlib.import_module(module)
    for part in (attr or "app").split("."):
        found = getattr(found, part)
    app: Callable[..., Any] = found
    return app


def _worker(sock: socket.socket, target: str) -> None:
    """In the child: die with the master, import the app, serve until killed."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        bjoern.server_run(sock, _load(target))
    finally:
        os._exit(1)  # bjoern's loop only returns on an error


def _stop(children: list[int], grace: float = 5.0) -> None:
    """SIGTERM every child, wait up to `grace` seconds, then SIGKILL what is left."""
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    left = list(children)
    while left and time.monotonic() < deadline:
        left = [pid for pid in left if os.waitpid(pid, os.WNOHANG) == (0, 0)]
        time.sleep(0.02)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _bind(host: str, port: int, workers: int, reuse_port: bool) -> list[socket.socket]:
    """The socket each worker accepts on: its own SO_REUSEPORT one, or one shared by all."""
    if not reuse_port:
        return [bjoern.bind_and_listen(host, port, listen_backlog=2048)] * workers
    return [
        bjoern.bind_and_listen(host, port, reuse_port=True, listen_backlog=2048)
        for _ in range(workers)
    ]


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("app", help="module:attr of the WSGI app")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--socket", choices=("reuseport", "shared"), default="reuseport")
    args = parser.parse_args(argv)
    sockets = _bind(args.host, args.port, args.workers, args.socket == "reuseport")
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    children: list[int] = []
    try:
        for sock in sockets:
            pid = os.fork()
            if pid == 0:
                _worker(sock, args.app)
            children.append(pid)
        print(f"bjoern: {args.workers} workers on {args.host}:{args.port} ({args.socket})")
        sys.stdout.flush()
        pid, status = os.wait()  # any worker's death ends the run
        children.remove(pid)
        print(f"bjoern: worker {pid} exited ({status}); stopping", file=sys.stderr, flush=True)
        return 1
    finally:
        _stop(children)


if __name__ == "__main__":
    sys.exit(main())
