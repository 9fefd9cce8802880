"""How an operator tells our processes apart: process titles and the pid file."""

from __future__ import annotations

import contextlib
import os

from kamisama_server.pids import pid_alive


def set_title(title: str) -> bool:
    """Name this process in ``ps``/``top`` (``kamisama: worker 2 myapp:app``).

    Through ``setproctitle`` when installed (``kamisama-server[proctitle]``);
    without it the title stays ``python ...`` and nothing else changes.
    """
    try:
        from setproctitle import setproctitle
    except ImportError:
        return False
    setproctitle(title)
    return True


class PidFileInUse(Exception):
    """The pid file names a process that is alive: another server, probably ours."""


class PidFile:
    """``--pid FILE``: refused at start if it names a live process, written once
    listening, removed at exit (only if it still holds our pid)."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)  # the app may chdir
        self.written = False

    def check(self) -> None:
        """Raise :class:`PidFileInUse` if the file names a live process other than us."""
        try:
            with open(self.path) as file:
                pid = int(file.read().strip() or "0")
        except (OSError, ValueError):
            return  # absent or garbage: a stale file, overwritten later
        if pid <= 0 or pid == os.getpid() or not pid_alive(pid):
            return
        raise PidFileInUse(f"pid file {self.path} names process {pid}, which is running")

    def write(self) -> None:
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as file:
            file.write(f"{os.getpid()}\n")
        os.replace(tmp, self.path)  # readers never see a half-written file
        self.written = True

    def remove(self) -> None:
        if not self.written:
            return
        with contextlib.suppress(OSError), open(self.path) as file:
            if file.read().strip() != str(os.getpid()):
                return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
