"""Real processes for tests: start a script in its own process group, watch its
output, send real signals, wait on conditions with deadlines (never sleep-and-hope).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]


def wait_until(condition: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # not Linux: fall back to kill(0)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


class GroupProcess:
    """A real process started in a session (process group) of its own, its
    stdout and stderr in files of its directory; always killed in ``cleanup``."""

    def __init__(
        self,
        directory: Path,
        argv: list[str],
        env: dict[str, str],
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.directory = directory
        self.stdout_path = directory / "stdout.txt"
        self.stderr_path = directory / "stderr.txt"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                argv,
                cwd=directory,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                pass_fds=pass_fds,
            )
        self.pid = self.process.pid

    # ---- reading -----------------------------------------------------------

    @property
    def out(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def err(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def output(self) -> str:
        return f"--- stdout:\n{self.out}\n--- stderr:\n{self.err}"

    def lines(self) -> list[str]:
        return self.out.splitlines()

    # ---- acting --------------------------------------------------------------

    def signal_group(self, sig: int) -> None:
        """As a terminal does on Ctrl+C: the signal reaches every process of the group."""
        os.killpg(self.pid, sig)

    def signal_master(self, sig: int) -> None:
        os.kill(self.pid, sig)

    send_signal = signal_master

    def wait(self, timeout: float = 20.0) -> int:
        """The exit code, or fail with the output after ``timeout``."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"master did not exit within {timeout}s\n{self.output()}"
            ) from None

    def cleanup(self) -> None:
        """Kill whatever is left of this process's own group."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


class Script(GroupProcess):
    """A Python script run as a master process in a new session (its own group)."""

    def __init__(self, directory: Path, source: str, env: dict[str, str] | None = None) -> None:
        self.path = directory / "main.py"
        self.path.write_text(textwrap.dedent(source))
        full_env = {**os.environ, **(env or {})}
        full_env.pop("PYTHONUNBUFFERED", None)  # print()'s text and newline must be one write
        super().__init__(directory, [sys.executable, str(self.path)], full_env)

    def wait_for_output(self, text: str, count: int = 1, timeout: float = 10.0) -> None:
        wait_until(lambda: self.out.count(text) >= count, timeout, f"{count}x {text!r} on stdout")

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 10.0) -> None:
        wait_until(lambda: self.err.count(text) >= count, timeout, f"{count}x {text!r} on stderr")

    def worker_pids(self) -> dict[int, int]:
        """{id: pid} from lines ``pid ID PID`` the test scripts print in run."""
        pids: dict[int, int] = {}
        for line in self.lines():
            if line.startswith("pid "):
                _, wid, pid = line.split()
                pids[int(wid)] = int(pid)
        return pids
