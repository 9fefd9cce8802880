"""pytest plugin (entry point ``pytest11``): serve your app with a live, multi-worker
``kamisama-serve`` in a subprocess, and test it with any real HTTP client.

The server is the real command line (``python -m kamisama_server``), started in
its own process group, bound to ``127.0.0.1:0``; the fixture waits (with a
deadline) for the ``kamisama: listening on ...`` line, and at teardown sends
SIGTERM, waits for the drain, then SIGKILLs whatever is left of the group.

Fixtures::

    def test_home(kamisama_server_factory):
        server = kamisama_server_factory("myapp:app", workers=2, threads=4)
        assert httpx.get(server.url + "/").status_code == 200

    @pytest.mark.kamisama_app("myapp:app", workers=2, keep_alive=1)
    def test_json(kamisama_server):
        assert httpx.get(f"{kamisama_server.url}/json").json() == {"ok": True}

``kamisama_server_factory(app, workers=2, *, args=(), env=None, cwd=None,
startup_timeout=30, stop_timeout=15, command=None, **options) -> LiveServer``
    Each option is a flag: ``keep_alive=1`` -> ``--keep-alive 1``, ``True`` ->
    ``--flag``, ``False`` -> ``--no-flag``, a list repeats the flag, ``None`` omits
    it (``workers=None``: ``WEB_CONCURRENCY`` or the CPU count decides). ``args``
    are extra raw arguments, appended last (so they win). ``bind=...`` (or
    ``host``/``port``) replaces the default ``127.0.0.1:0``. ``env`` is added
    to the current environment; ``command`` replaces ``python -m kamisama_server``
    (e.g. ``["kamisama-serve"]``). A misspelt option is the server's usage error.

``kamisama_server``
    One server per test, from the closest ``@pytest.mark.kamisama_app(app,
    **options)`` marker, else from the ini options ``kamisama_app`` and
    ``kamisama_args`` (extra flags, shell-split).

Where the app is found, for every entry point (``kamisama_server``,
``kamisama_server_factory``, ``start_server``): the server runs in the
directory of pytest's ini file (else pytest's rootdir), so ``APP`` and
relative paths resolve the same under ``pytest`` and ``cd tests && pytest``.
``cwd=...`` (or ``app_dir=...``) says otherwise; outside a pytest run,
``start_server`` uses the current directory.

When a test that used a live server fails, the server's stderr from that test
(its tracebacks; the last 12,000 characters) is added to pytest's report as a
section ``kamisama-serve (pid N) stderr``.

Servers die with pytest: on Linux each master is started with
``PR_SET_PDEATHSIG`` (SIGTERM when the thread that started it ends, even if
pytest is SIGKILLed), and its workers exit when their master does. Start
servers from the main thread (fixtures are), not from a short-lived thread.

``LiveServer``: ``url`` (first listening URL), ``urls``, ``port``, ``workers``
(as announced), ``pid`` (the master), ``process`` (its ``Popen``),
``stdout``/``stderr`` (captured so far, in memory), ``worker_pids()`` ({worker
id: pid} of the live ones), ``wait_for(text, stream="stderr", timeout=10)``,
``send_signal(sig)`` (to the master), ``stop(sig=SIGTERM) -> exit code``,
``close()``; also a context manager. For a server shared by many tests, write
a session fixture around :func:`start_server`::

    @pytest.fixture(scope="session")
    def live():
        with start_server("myapp:app", workers=2) as server:
            yield server

A server that exits or stays silent past ``startup_timeout`` raises
:class:`ServerStartError` with its exit code, command and output, after its
whole process group was killed. This module imports only the standard library
and pytest (the server runs in its own process), so it adds next to nothing to
runs that don't use it. With ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set, load it
with ``-p kamisama_server.testing``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import os
import re
import shlex
import signal as signals
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Protocol

import pytest

from kamisama_server.pids import pid_alive

__all__ = ["LiveServer", "ServerStartError", "start_server"]

_LISTENING = re.compile(
    r"^kamisama: listening on (?P<urls>.+) \((?P<workers>\d+) workers?, pid (?P<pid>\d+)\)$",
    re.MULTILINE,
)
_WORKER_STARTED = re.compile(r"\[kamisama\] worker (\d+) \(pid (\d+)\) started")
_DEFAULT_BIND = "127.0.0.1:0"
_POLL = 0.05


_PR_SET_PDEATHSIG = 1


def _parent_death_signal() -> Any:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when its parent dies, or None.

    libc is loaded here, in the parent: the child between fork and exec only
    makes the one system call. Should the parent already be gone by then, the
    child signals itself (the death signal would never come).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signals.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signals.SIGTERM)

    return preexec


class ServerStartError(RuntimeError):
    """The server exited, or never said it was listening, before the deadline."""


class _Output:
    """A child's stream read by a thread into memory, so a full pipe never blocks
    it, and waiters are woken on each chunk instead of polling files."""

    def __init__(self, stream: Any) -> None:
        self._chunks: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        with stream:
            for chunk in iter(lambda: stream.read1(65536), b""):
                with self._changed:
                    self._chunks.append(chunk.decode(errors="replace"))
                    self._changed.notify_all()

    @property
    def text(self) -> str:
        with self._changed:
            return "".join(self._chunks)

    def wait_changed(self, seconds: float) -> None:
        with self._changed:
            self._changed.wait(seconds)

    def join(self, seconds: float) -> None:
        self._thread.join(seconds)


def _flags(options: Mapping[str, Any]) -> list[str]:
    """``{"keep_alive": 1, "preload": True}`` -> ``["--keep-alive", "1", "--preload"]``."""
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if value is True:
            argv.append(flag)
        elif value is False:
            argv.append("--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


class LiveServer:
    """A running ``kamisama-serve`` master (in its own process group) and its output."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        stop_timeout: float = 15.0,
    ) -> None:
        self.argv = list(argv)
        self.stop_timeout = stop_timeout
        self.urls: list[str] = []
        self.workers = 0
        self.process = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # our own group: teardown can kill it whole
            preexec_fn=_parent_death_signal(),  # and it dies with pytest, even a SIGKILLed one
        )
        self.pid = self.process.pid
        assert self.process.stdout is not None and self.process.stderr is not None
        self._out = _Output(self.process.stdout)
        self._err = _Output(self.process.stderr)
        _running.add(self)
        _this_test.append(self)

    # ---- what it said --------------------------------------------------------------

    @property
    def stdout(self) -> str:
        """Everything the server printed on stdout so far (readiness line, access log)."""
        return self._out.text

    @property
    def stderr(self) -> str:
        """Everything on stderr so far (``[kamisama] ...`` events, app logs, tracebacks)."""
        return self._err.text

    @property
    def url(self) -> str:
        """The first HTTP(S) URL it listens on (else the first, e.g. ``unix:/path``)."""
        web = [url for url in self.urls if url.startswith(("http://", "https://"))]
        if not (web or self.urls):
            raise RuntimeError("the server has not announced where it listens")
        return (web or self.urls)[0]

    @property
    def port(self) -> int:
        """The TCP port of :attr:`url` (the real one, when bound to port 0)."""
        match = re.search(r":(\d+)$", self.url)
        if match is None:
            raise RuntimeError(f"{self.url} has no TCP port")
        return int(match.group(1))

    def worker_pids(self) -> dict[int, int]:
        """{worker id: pid} of the live workers, from the master's ``started`` lines."""
        latest = {int(wid): int(pid) for wid, pid in _WORKER_STARTED.findall(self.stderr)}
        return {wid: pid for wid, pid in sorted(latest.items()) if pid_alive(pid)}

    def wait_for(
        self, text: str, stream: Literal["stdout", "stderr"] = "stderr", timeout: float = 10.0
    ) -> None:
        """Wait until ``text`` appears on ``stream``; AssertionError with the output if not."""
        output = self._out if stream == "stdout" else self._err
        deadline = time.monotonic() + timeout
        while text not in output.text:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"{text!r} did not appear on {stream} within {timeout}s\n{self._report()}"
                )
            output.wait_changed(min(left, _POLL * 4))

    # ---- starting --------------------------------------------------------------------

    def wait_listening(self, timeout: float = 30.0) -> LiveServer:
        """Block until the readiness line; on exit or deadline, clean up and raise."""
        deadline = time.monotonic() + timeout
        while True:
            match = _LISTENING.search(self.stdout)
            if match is not None:
                self.urls = match.group("urls").split(", ")
                self.workers = int(match.group("workers"))
                # The workers' "started" lines went to stderr before this line went to
                # stdout, but each stream has its own reader: let stderr catch up.
                while len(self.worker_pids()) < self.workers and time.monotonic() < deadline:
                    self._err.wait_changed(_POLL)
                return self
            code = self.process.poll()
            if code is not None:
                self.close()  # also collects the last of its output
                raise ServerStartError(
                    f"kamisama-serve (pid {self.pid}) exited with code {code} before listening\n"
                    f"{self._report()}"
                )
            if time.monotonic() >= deadline:
                self.close(grace=0)
                raise ServerStartError(
                    f"kamisama-serve (pid {self.pid}) did not report listening within {timeout}s; "
                    "killed\n"
                    f"{self._report()}"
                )
            self._out.wait_changed(_POLL)

    # ---- stopping --------------------------------------------------------------------

    def send_signal(self, sig: int) -> None:
        """Signal the master only (e.g. SIGTTIN, SIGUSR1); ignored once it has exited."""
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def stop(self, sig: int = signals.SIGTERM, timeout: float | None = None) -> int:
        """Signal the master and wait for it; its exit code. SIGKILLs the group if it hangs."""
        timeout = self.stop_timeout if timeout is None else timeout
        self.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.close(grace=0)
            raise AssertionError(
                f"kamisama-serve did not exit within {timeout}s of {signals.Signals(sig).name}; "
                f"killed\n{self._report()}"
            ) from None
        self.close()
        return code

    def close(self, grace: float | None = None) -> None:
        """Stop (SIGTERM, then SIGKILL after ``grace`` s) and kill any process left in
        the group. Safe to call twice; teardown calls it."""
        grace = self.stop_timeout if grace is None else grace
        if self.process.poll() is None:
            self.send_signal(signals.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace)
        self._kill_group()
        self.process.wait()
        self._out.join(2.0)
        self._err.join(2.0)
        _running.discard(self)

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signals.SIGKILL)

    def _report(self) -> str:
        return (
            f"command: {shlex.join(self.argv)}\n"
            f"--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"
        ).rstrip()

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LiveServer pid={self.pid} urls={self.urls} returncode={self.process.poll()}>"


_running: set[LiveServer] = set()
# Servers started since the current test's setup began (for its failure report).
_this_test: list[LiveServer] = []
# The ini file's directory (else the rootdir) of each pytest run in progress (a
# pytester run nests one): where every entry point starts the server by default.
_homes: list[str] = []
_REPORT_TAIL = 12000


@atexit.register
def _kill_leftovers() -> None:
    """A run cut short (teardown never ran) must not leave servers behind."""
    for server in list(_running):
        server._kill_group()


def start_server(
    app: str,
    workers: int | None = 2,
    *,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    startup_timeout: float = 30.0,
    stop_timeout: float = 15.0,
    command: Sequence[str] | None = None,
    **options: Any,
) -> LiveServer:
    """Start ``kamisama-serve APP`` and return once every worker accepts.

    ``cwd`` defaults to the running pytest's ini directory (else its rootdir),
    outside pytest to the current directory: see the module docstring.

    ``command`` replaces ``[sys.executable, "-m", "kamisama_server"]`` (e.g. the
    ``kamisama-serve`` script). Options become flags (see the module docstring);
    ``workers=None`` leaves the count to ``WEB_CONCURRENCY`` or the CPU count.
    """
    if not {"bind", "host", "port"} & options.keys():
        options["bind"] = _DEFAULT_BIND
    if cwd is None and _homes:
        cwd = _homes[-1]
    argv = [
        *(command or [sys.executable, "-m", "kamisama_server"]),
        app,
        *_flags({"workers": workers, **options}),
        *args,
    ]
    server = LiveServer(argv, env=env, cwd=cwd, stop_timeout=stop_timeout)
    return server.wait_listening(startup_timeout)


# --------------------------------------------------------------------------- pytest hooks


class ServerFactory(Protocol):
    """The type of ``kamisama_server_factory``: :func:`start_server`'s signature."""

    def __call__(self, app: str, workers: int | None = 2, **kwargs: Any) -> LiveServer: ...


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("kamisama_app", "APP (module:attr) for the kamisama_server fixture", default="")
    parser.addini(
        "kamisama_args", "extra kamisama-serve flags for the kamisama_server fixture", type="args"
    )


def _home(config: pytest.Config) -> str:
    return str(config.inipath.parent if config.inipath else config.rootpath)


def pytest_configure(config: pytest.Config) -> None:
    _homes.append(_home(config))
    config.addinivalue_line(
        "markers",
        "kamisama_app(app, workers=2, **options): the app the kamisama_server fixture serves",
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    if _homes:
        _homes.pop()


_STDERR_SEEN = pytest.StashKey[dict[int, int]]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Note how much each running server has said: the report shows only what came after."""
    _this_test.clear()
    item.stash[_STDERR_SEEN] = {id(server): len(server.stderr) for server in _running}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test that used a live server gets the server's stderr (tracebacks) as a section.

    The failing assertion (``assert 500 == 200``) says little; the app's
    traceback is in the server's stderr, which no longer has to be dug out.
    """
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.failed or report.when not in ("setup", "call"):
        return
    seen = item.stash.get(_STDERR_SEEN, {})
    servers = [server for server in _running if id(server) in seen]
    servers += [server for server in _this_test if server not in servers]
    for server in servers:
        text = server.stderr[seen.get(id(server), 0) :]
        if len(text) > _REPORT_TAIL:
            cut = len(text) - _REPORT_TAIL
            text = f"[... {cut} earlier characters cut ...]\n" + text[cut:]
        code = server.process.poll()
        state = f", exited with code {code}" if code is not None else ""
        report.sections.append((f"kamisama-serve (pid {server.pid}) stderr{state}", text))


@pytest.fixture
def kamisama_server_factory() -> Iterator[ServerFactory]:
    """``factory(app, workers=2, **options) -> LiveServer``; all stopped at teardown."""
    started: list[LiveServer] = []

    def factory(app: str, workers: int | None = 2, **kwargs: Any) -> LiveServer:
        server = start_server(app, workers, **kwargs)
        started.append(server)
        return server

    yield factory
    for server in started:  # signal them all first, so their drains overlap
        server.send_signal(signals.SIGTERM)
    for server in reversed(started):
        server.close()


@pytest.fixture
def kamisama_server(
    request: pytest.FixtureRequest, kamisama_server_factory: ServerFactory
) -> LiveServer:
    """The app of ``@pytest.mark.kamisama_app(...)``, else of the ini ``kamisama_app``."""
    config = request.config
    here = _home(config)  # the same rule as start_server's default
    marker = request.node.get_closest_marker("kamisama_app")
    if marker is not None:
        options = dict(marker.kwargs)
        app = marker.args[0] if marker.args else options.pop("app", None)
        if not isinstance(app, str):
            raise pytest.UsageError("@pytest.mark.kamisama_app needs the app: 'module:attr'")
        options.setdefault("cwd", here)
        return kamisama_server_factory(app, **options)
    app = str(config.getini("kamisama_app"))
    if not app:
        raise pytest.UsageError(
            "the kamisama_server fixture needs @pytest.mark.kamisama_app('module:attr') "
            "or the ini option kamisama_app"
        )
    args = [str(arg) for arg in config.getini("kamisama_args")]
    return kamisama_server_factory(app, args=args, cwd=here)
