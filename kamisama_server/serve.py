"""The server: ``kamisama(run=serve_one_worker, shutdown=drain_then_hook)``.

Everything about processes (forking, reaping, signals, timeouts, readiness,
fail-fast) is the supervisor's; this module only says what a worker does:
load the app, accept on its sockets, and on shutdown drain before calling the
user's hook. The master binds the sockets before ``kamisama()`` forks.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import random
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from kamisama_server import systemd
from kamisama_server.config import ServeConfig
from kamisama_server.http.asgi import AsgiAdapter
from kamisama_server.http.balance import LoadBoard, Seat
from kamisama_server.http.config import HttpConfig
from kamisama_server.http.exchange import AppHandler
from kamisama_server.http.handover import Handover
from kamisama_server.http.lifespan import LifespanFailed
from kamisama_server.http.server import HttpServer
from kamisama_server.http.wsgi import WSGIAdapter
from kamisama_server.identity import PidFile, PidFileInUse, set_title
from kamisama_server.loader import LoadError, as_asgi3, detect_interface, load_app, load_hook
from kamisama_server.logs import configure_server as configure_logging
from kamisama_server.logs import write_line
from kamisama_server.options import KamisamaOptions
from kamisama_server.reload import (
    RELOAD_SIGNAL,
    ReloadUnavailable,
    Watcher,
    forget_modules,
    probe_import,
    require_watchfiles,
)
from kamisama_server.signals import RESTART_SIGNAL
from kamisama_server.sockets import BindError, Listeners, bind_listeners
from kamisama_server.supervisor import Supervisor, check_platform
from kamisama_server.worker import (
    draining,
    log,
    ready,
    report_failure,
    request_replacement,
    worker_id,
)

REPLACED_SIGNAL = RESTART_SIGNAL.name if RESTART_SIGNAL else "SIGUSR1"
"""What a worker retired by a rolling restart (or a replacement) is stopped with."""

EXIT_USAGE = 2
EXIT_CANNOT_START = 3
EXIT_CANNOT_BIND = 4


class StartupFailed(Exception):
    """The app cannot be served: one clear line, exit 3, no respawn loop.

    ``detail`` (a traceback, or empty) is logged at debug level only.
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


@dataclass
class _Loaded:
    """What a worker serves: resolved once (in the master with ``--preload``)."""

    app: Any
    interface: str
    run_hook: Callable[..., Any] | None
    shutdown_hook: Callable[..., Any] | None


@dataclass
class _WorkerState:
    handler: AppHandler | None = None
    server: HttpServer | None = None
    adopted: dict[int, HttpServer] = field(default_factory=dict)
    """Sibling slots whose queue we accept on while their worker is down (reuseport)."""
    asgi: AsgiAdapter | None = None
    wsgi: WSGIAdapter | None = None
    stopping: bool = False
    pending_hook: Awaitable[Any] | None = None  # an async --run hook, awaited on the loop
    seat: Seat | None = None
    replacing: bool = False  # asked the master for a successor (watchdog, --max-requests)
    request_limit: int = 0  # this worker's --max-requests draw; 0 = no limit
    last_sweep: float = 0.0
    serving: asyncio.Event = field(default_factory=asyncio.Event)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)


def http_config(config: ServeConfig) -> HttpConfig:
    """The engine's view of the options."""
    return HttpConfig(
        limit_request_line=config.limit_request_line,
        limit_request_fields=config.limit_request_fields,
        limit_request_field_size=config.limit_request_field_size,
        limit_request_body=config.limit_request_body,
        keep_alive=config.keep_alive,
        header_timeout=config.header_timeout,
        stall_timeout=config.stall_timeout,
        ws_max_size=config.ws_max_size,
        parser=config.http_parser,
        limit_concurrency=config.limit_concurrency,
        backlog=config.backlog,
        root_path=config.root_path,
        proxy_headers=config.proxy_headers,
        forwarded_allow_ips=config.forwarded_allow_ips,
        server_header=config.server_header,
        ssl=_ssl_context(config),
        access_log=config.access_log,
        access_log_format=config.access_log_format,
    )


def _ssl_context(config: ServeConfig) -> ssl.SSLContext | None:
    if not config.ssl_certfile:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.ssl_certfile, config.ssl_keyfile)
    return context


def load(config: ServeConfig) -> _Loaded:
    """Import the app and the hooks; ``StartupFailed`` names the cause."""
    try:
        app = load_app(config.app, app_dir=config.app_dir, factory=config.factory)
        interface = detect_interface(app, config.interface)
        if interface == "asgi":
            app = as_asgi3(app)
        run_hook = load_hook(config.run_hook, config.app_dir) if config.run_hook else None
        shutdown_hook = (
            load_hook(config.shutdown_hook, config.app_dir) if config.shutdown_hook else None
        )
    except LoadError as error:
        raise StartupFailed(str(error), error.detail) from None
    return _Loaded(app, interface, run_hook, shutdown_hook)


def _cannot_start(wid: int, error: StartupFailed) -> NoReturn:
    """In a worker: the master says it once, with the traceback below at debug level
    (``report_failure``); the worker's own copy of the line is debug."""
    log(f"worker {wid} (pid {os.getpid()}) cannot start: {error}", logging.DEBUG)
    report_failure(str(error), error.detail)
    raise SystemExit(EXIT_CANNOT_START)


async def _call(hook: Callable[..., Any], *args: Any) -> None:
    result = hook(*args)
    if inspect.isawaitable(result):
        await result


class ServerWorkers:
    """The ``run``/``shutdown`` pair handed to ``kamisama()``."""

    def __init__(
        self,
        config: ServeConfig,
        http: HttpConfig,
        listeners: Listeners,
        loaded: _Loaded | None,
        board: LoadBoard | None = None,
        handover: Handover | None = None,
    ) -> None:
        self.config = config
        self.listeners = listeners
        self.loaded = loaded
        self.http = http
        self.board = board
        self.handover = handover
        self.state = _WorkerState()

    def setup(self, wid: int) -> None:
        """In the fresh worker, before any event loop runs: import the app, run ``--run``.

        Apps and frameworks expect to be imported where no loop runs (Django's
        ORM refuses to run under one), as every WSGI server does.
        """
        set_title(f"kamisama: worker {wid} {self.config.app}")
        self.state.request_limit = draw_request_limit(
            self.config.max_requests, self.config.max_requests_jitter
        )
        mine = self.listeners.sockets_for(wid)
        for listener in self.listeners.all():
            if listener.sock not in mine:
                # Only the master keeps every slot's socket (and lends a down one):
                # a slot's last holder must be its own worker, or a removed slot's
                # queue would be reset by some sibling's late close.
                listener.sock.close()
        try:
            loaded = self.loaded = self.loaded or load(self.config)
            if loaded.run_hook is not None:
                result = loaded.run_hook(wid)
                if inspect.isawaitable(result):
                    self.state.pending_hook = result  # an async hook: awaited on the loop
        except StartupFailed as error:
            _cannot_start(wid, error)

    async def run(self, wid: int) -> None:
        """On the worker's loop: ASGI lifespan, then serve until the drain ends."""
        state = self.state
        loaded = self.loaded
        assert loaded is not None, "setup() loads the app first"
        try:
            if state.pending_hook is not None:
                await state.pending_hook
            handler = state.handler = await self._make_handler(loaded)
        except LifespanFailed as error:
            _cannot_start(wid, StartupFailed(str(error)))
        seat = state.seat = self.board.claim(wid) if self.board is not None else None
        server = state.server = self._new_server(handler, seat=seat, on_tick=self._on_tick)
        server.hand_over_with(self.handover)
        server.limit_requests(state.request_limit, self._recycle)
        await server.start(self.listeners.sockets_for(wid))
        state.serving.set()
        ready()
        await state.stopped.wait()

    def _new_server(
        self,
        handler: AppHandler,
        seat: Seat | None = None,
        on_tick: Callable[[float], None] | None = None,
    ) -> HttpServer:
        websocket = self.state.asgi.websocket if self.state.asgi else None
        return HttpServer(handler, self.http, websocket=websocket, seat=seat, on_tick=on_tick)

    def _on_tick(self, now: float) -> None:
        """The main server's ticker (a few times a second): watchdog and board upkeep."""
        state = self.state
        limit = self.config.request_timeout
        if state.wsgi is not None and limit > 0:
            state.wsgi.check_stuck(time.monotonic(), limit, self._stuck)
        if state.seat is not None and now - state.last_sweep >= 1.0:
            state.last_sweep = now
            state.seat.board.sweep()

    def _recycle(self) -> None:
        """Past --max-requests: get a successor, then drain (bounds a leaking app)."""
        if not self.state.replacing:
            self.state.replacing = True
            limit = self.state.request_limit
            request_replacement(f"served {limit} requests (--max-requests {limit})")

    def _stuck(self, report: str) -> None:
        """A WSGI call ran over --request-timeout: say so, and get a successor (once)."""
        who = f"worker {worker_id()} (pid {os.getpid()})"
        log(f"{who}: {report}", logging.ERROR)
        if not self.state.replacing:
            self.state.replacing = True
            request_replacement("a request ran over --request-timeout")

    def lend_fds(self, wid: int) -> list[int]:
        """In the master: the slot's own sockets, lent to siblings while it is down."""
        return [listener.sock.fileno() for listener in self.listeners.per_slot.get(wid, [])]

    async def on_sibling(self, wid: int, change: str, fds: list[int]) -> None:
        """Cover a down sibling's ``SO_REUSEPORT`` queue until its successor is ready.

        Without this, connections the kernel hashed to that slot would wait for
        its respawn (or its backoff); with a shared socket nothing is lent.
        """
        lent = [socket.socket(fileno=fd) for fd in fds]
        state = self.state
        await state.serving.wait()
        covers = change == "down" and lent and wid not in state.adopted
        if covers and not state.stopping and state.handler is not None:
            server = state.adopted[wid] = self._new_server(state.handler)
            await server.start(lent)
            return
        for sock in lent:
            sock.close()
        if change == "up":
            covering = state.adopted.pop(wid, None)
            if covering is not None:
                await covering.drain(timeout=self.config.timeout, close_sockets=True)

    async def _make_handler(self, loaded: _Loaded) -> AppHandler:
        if loaded.interface == "asgi":
            adapter = AsgiAdapter(loaded.app, self.http)
            await adapter.startup()
            self.state.asgi = adapter
            return adapter
        wsgi = WSGIAdapter(loaded.app, threads=self.config.threads)
        self.state.wsgi = wsgi
        return wsgi

    def stop_requested(self, signal_name: str) -> None:
        """In the worker's control thread, at once: even an app call running on the
        loop now answers with ``Connection: close``."""
        server = self.state.server
        if server is not None:
            server.mark_draining()

    async def shutdown(self, wid: int, signal_name: str) -> None:
        state = self.state
        state.stopping = True
        servers = [server for server in (state.server, *state.adopted.values()) if server]
        served = {id(sock) for server in servers for sock in server.sockets}
        for listener in self.listeners.all():
            if id(listener.sock) not in served:
                listener.sock.close()  # the master closed its copy too: no new queue here
        try:
            # No drain timeout of our own: the master enforces --timeout, so a request
            # still running then is always a killed worker (exit 1, named in the log),
            # never a race between our timer and the master's that could exit 0.
            # Replaced (SIGUSR1, --max-requests, watchdog): a successor serves already,
            # so an idle keep-alive connection may run out its keep-alive and have its
            # next request answered with close, rather than race a close of ours.
            replaced = signal_name == REPLACED_SIGNAL
            grace = min(self.config.keep_alive, self.config.timeout / 2) if replaced else None
            for server in servers:
                server.stop_taking_work(close_sockets=True, idle_grace=grace)
            draining()  # a rolling restart's "done" waits for this line
            await asyncio.gather(*(server.drain() for server in servers))
            if state.asgi is not None:
                await state.asgi.shutdown()
            if state.wsgi is not None:
                await asyncio.get_running_loop().run_in_executor(None, state.wsgi.close)
        finally:
            state.stopped.set()
        if self.loaded is not None and self.loaded.shutdown_hook is not None:
            await _call(self.loaded.shutdown_hook, wid, signal_name)


def draw_request_limit(limit: int, jitter: int) -> int:
    """This worker's own ``--max-requests``: in [limit, limit + jitter], 0 for none."""
    return limit + random.randint(0, jitter) if limit else 0


class _Reloads:
    """``--reload`` in the master: check the changed code imports, then restart."""

    def __init__(self, config: ServeConfig, workers: ServerWorkers) -> None:
        self.config = config
        self.workers = workers
        self.supervisor: Supervisor | None = None
        self.watcher = Watcher(config.reload_dirs or (config.app_dir,), self.changed)

    def changed(self, paths: list[str]) -> None:
        """In the watcher thread: a batch of ``.py`` files changed."""
        names = ", ".join(os.path.relpath(p, self.config.app_dir) for p in paths[:3])
        config = self.config
        if config.preload:
            forget_modules(self.watcher.directories)
            try:
                self.workers.loaded = load(config)
                error = None
            except StartupFailed as failed:
                error = str(failed)
        else:
            error = probe_import(config.app, config.app_dir, config.factory)
        if error is not None:
            log(f"reload: {names} changed, but the app does not load; old workers keep serving")
            print(error, file=sys.stderr, flush=True)
            return
        if self.supervisor is not None:
            self.supervisor.restart(f"reload: {names} changed", RELOAD_SIGNAL)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _refuse(message: str, code: int) -> int:
    """The master cannot go on: one error line, and the exit code to return."""
    log(message, logging.ERROR)
    return code


def serve(config: ServeConfig) -> int:
    """Bind, fork, serve until a shutdown signal; the process exit code."""
    check_platform()
    if config.log_config and config.app_dir not in sys.path:
        sys.path.insert(0, config.app_dir)  # its formatters and filters may live by the app
    try:
        configure_logging(config.log_level, config.log_config)
    except ValueError as error:
        return _refuse(f"cannot start: {error}", EXIT_CANNOT_START)
    set_title(f"kamisama: master {config.app}")
    pid_file = PidFile(config.pid_file) if config.pid_file else None
    try:
        if config.reload:
            require_watchfiles()
        if pid_file is not None:
            pid_file.check()
    except ReloadUnavailable as error:
        return _refuse(f"cannot start: {error}", EXIT_USAGE)
    except PidFileInUse as error:
        return _refuse(f"cannot start: {error}", EXIT_CANNOT_BIND)
    loaded: _Loaded | None = None
    if config.preload:
        try:
            loaded = load(config)
        except StartupFailed as error:
            code = _refuse(f"cannot start: {error}", EXIT_CANNOT_START)
            if error.detail:
                log(error.detail, logging.DEBUG)  # the traceback, below its one line
            return code
    try:
        http = http_config(config)  # a bad certificate: a startup error, found before binding
    except (OSError, ssl.SSLError) as error:
        key = config.ssl_keyfile or config.ssl_certfile  # the key may sit in the cert file
        message = f"cannot start: TLS certificate {config.ssl_certfile} with key {key}: {error}"
        return _refuse(message, EXIT_CANNOT_START)
    try:
        listeners = bind_listeners(
            config.binds,
            slots=config.workers,
            mode=config.socket_mode,
            backlog=config.backlog,
            unix_mode=config.unix_socket_mode,
        )
    except BindError as error:
        return _refuse(f"cannot bind {error}", EXIT_CANNOT_BIND)
    board = LoadBoard() if config.socket_mode == "shared" else None
    handover = Handover() if board is not None else None
    workers = ServerWorkers(config, http, listeners, loaded, board, handover)
    reloads = _Reloads(config, workers) if config.reload else None
    scheme = "https" if config.ssl_certfile else "http"

    def status() -> str:
        return f"{supervisor.target} workers serving {', '.join(listeners.urls(scheme))}"

    def announce() -> None:
        urls = ", ".join(listeners.urls(scheme))
        count = supervisor.target
        if pid_file is not None:
            pid_file.write()
        workers_text = "1 worker" if count == 1 else f"{count} workers"
        if reloads is not None:
            reloads.watcher.start()  # watching before we say so: no early edit is missed
        # stdout, not the log: the line tools wait for, whatever the log level.
        write_line(1, f"kamisama: listening on {urls} ({workers_text}, pid {os.getpid()})")
        systemd.ready(status())

    def rolling(phase: str) -> None:
        if phase == "begin":
            systemd.reloading()
        else:
            systemd.ready(status())

    def on_shutdown(_signal: str) -> None:
        systemd.stopping()
        if reloads is not None:
            reloads.watcher.stop()
        listeners.close()

    options = KamisamaOptions(
        setup=workers.setup,
        run=workers.run,
        shutdown=workers.shutdown,
        workers=config.workers,
        timeout=config.timeout,
        manual_ready=True,
        announces_draining=True,
        fail_fast=True,
        on_ready=announce,
        before_fork=listeners.add_slot,
        on_sibling=workers.on_sibling,
        lend_fds=workers.lend_fds,
        on_stop_requested=workers.stop_requested,
        on_shutdown=on_shutdown,
        loop_factory=_loop_factory(),
        heartbeat_timeout=config.request_timeout or None,
        shutdown_delay=config.shutdown_delay,
        on_rolling_restart=rolling,
    )
    supervisor = Supervisor(options)
    if reloads is not None:
        reloads.supervisor = supervisor
    try:
        return supervisor.run()
    finally:
        listeners.close()
        if handover is not None:
            handover.close()
        if pid_file is not None:
            pid_file.remove()
