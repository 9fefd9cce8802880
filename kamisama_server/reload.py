"""``--reload``: watch the sources in the master, replace the workers on a change.

The watcher is a thread of the master (``watchfiles``, an optional extra). On a
``.py`` change it first checks that the app still imports, so a half-typed edit
prints its error once and the old workers keep serving; then it asks the
supervisor for a rolling restart (``Supervisor.restart``), whose retired
workers' hooks get ``"SIGUSR2"``.

How the new code is checked: without ``--preload`` a short subprocess imports
the app (``python -m kamisama_server.reload``), as each new worker will; with
``--preload`` the master itself drops the watched directories' modules from
``sys.modules`` and imports again, and new workers are forked from that.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence

RELOAD_SIGNAL = "SIGUSR2"
"""What a replaced worker's shutdown hook receives on a reload."""

MISSING = "--reload needs the watchfiles package: pip install 'kamisama-server[reload]'"


class ReloadUnavailable(Exception):
    """``watchfiles`` is not installed."""


def require_watchfiles() -> None:
    try:
        import watchfiles  # noqa: F401
    except ImportError:
        raise ReloadUnavailable(MISSING) from None


def probe_import(spec: str, app_dir: str, factory: bool) -> str | None:
    """Import the app in a fresh interpreter: None if it loads, else its error."""
    command = [sys.executable, "-m", "kamisama_server.reload", spec, app_dir, str(int(factory))]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode == 0:
        return None
    return (done.stderr or done.stdout).strip() or f"exit code {done.returncode}"


def forget_modules(directories: Sequence[str]) -> None:
    """Drop from ``sys.modules`` every module loaded from under ``directories``."""
    roots = tuple(os.path.join(os.path.abspath(d), "") for d in directories)
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and os.path.abspath(path).startswith(roots):
            del sys.modules[name]


_READY_LOOK_MS = 200  # the watch wakes this often without a change (so start() knows it runs)


class Watcher:
    """A daemon thread calling ``on_change(paths)`` for each batch of ``.py`` changes."""

    def __init__(self, directories: Sequence[str], on_change: Callable[[list[str]], None]) -> None:
        self.directories = list(directories)
        self.on_change = on_change
        self.stop_event = threading.Event()
        self.watching = threading.Event()  # set once the directories are watched
        self.thread = threading.Thread(target=self._watch, name="kamisama-reload", daemon=True)

    def start(self, timeout: float = 5.0) -> None:
        """Start watching; return once the watch is in place (or after ``timeout``).

        A file saved between "listening" and the watch being set up would
        otherwise go unnoticed (a suspect, not proven, for a CI run that timed
        out waiting for the reload of an edit made right after start-up). With
        ``--reload`` start-up takes up to ``_READY_LOOK_MS`` longer.
        """
        self.thread.start()
        self.watching.wait(timeout)

    def stop(self) -> None:
        self.stop_event.set()

    def _watch(self) -> None:
        try:
            self._watch_changes()
        except Exception:  # a watch that cannot run must say so, not vanish
            logging.getLogger("kamisama.reload").exception("reload: the file watch stopped")
        finally:
            self.watching.set()  # start() must not wait for a watch that is gone

    def _watch_changes(self) -> None:
        from watchfiles import PythonFilter, watch

        logging.getLogger("watchfiles").setLevel(logging.WARNING)  # we log the change

        # The first yield (changes, or an empty set once rust_timeout passes) comes from
        # inside the watch: from then on no edit is missed.
        for changes in watch(
            *self.directories,
            watch_filter=PythonFilter(),
            stop_event=self.stop_event,
            raise_interrupt=False,
            rust_timeout=_READY_LOOK_MS,
            yield_on_timeout=True,
        ):
            self.watching.set()
            if self.stop_event.is_set():
                return
            if changes:
                self.on_change(sorted({path for _change, path in changes}))


def _main(argv: Sequence[str]) -> int:
    """The import probe: ``python -m kamisama_server.reload SPEC APP_DIR FACTORY``."""
    from kamisama_server.loader import LoadError, load_app

    spec, app_dir, factory = argv
    try:
        load_app(spec, app_dir=app_dir, factory=factory == "1")
    except LoadError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
