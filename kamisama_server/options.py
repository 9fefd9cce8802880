"""``KamisamaOptions`` and how ``kamisama(...)``'s arguments become one.

The seed accepts a bare run function or an options object; Python users also
expect keyword arguments and a plain mapping. All four forms end here, and every
check happens before anything is forked, so a typo never costs a worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

RunFn = Callable[[int], Any]
"""``run(id)``: sync (may return at once or block forever) or ``async def``."""

ShutdownFn = Callable[[int, str], Any]
"""``shutdown(id, signal_name)``: sync or ``async def``; awaited before the worker exits."""

SiblingFn = Callable[[int, str, list[int]], Any]
"""``on_sibling(id, "down" | "up", fds)``: another worker slot changed; ``fds`` are
the descriptors ``lend_fds`` lent with a "down" (the callee owns them)."""


@dataclass(frozen=True)
class KamisamaOptions:
    """What the master needs to supervise its workers.

    The first four fields are the seed's API. The rest are the capabilities the
    server needs from the supervisor; they are public because any user of the
    library may need them too.
    """

    run: RunFn
    workers: int | None = None
    shutdown: ShutdownFn | None = None
    timeout: float = 10.0

    manual_ready: bool = False
    """If true, a worker counts as ready only once it calls ``kamisama_server.ready()``;
    else as soon as ``run`` is called."""

    fail_fast: bool = False
    """A worker that dies before it became ready stops the whole cluster (exit 3),
    instead of being respawned forever."""

    on_ready: Callable[[], None] | None = None
    """Called in the master once, the first time every worker is ready."""

    before_fork: Callable[[int], object] | None = None
    """Called in the master with the worker id before each fork (e.g. to bind a
    socket for a new slot)."""

    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    """The event loop an async ``run`` is awaited on (default: asyncio's)."""

    on_sibling: SiblingFn | None = None
    """Called in each worker when another slot changes: ``(id, "down", fds)`` no
    worker serves it (its worker died and is not ready again, or SIGTTOU removed
    it), ``(id, "up", [])`` it is served again. Sync or async; on the worker's loop
    for an async ``run``. Lets siblings cover for a slot nobody serves (the server
    accepts on the slot's socket, lent with the "down")."""

    lend_fds: Callable[[int], Sequence[int]] | None = None
    """Called in the master with a slot id: descriptors to lend (``SCM_RIGHTS``) with
    that slot's "down" notice, so workers need not hold every slot's sockets."""

    on_stop_requested: Callable[[str], object] | None = None
    """Called in the worker's control thread the moment it decides to stop, with the
    signal's name, before ``shutdown`` is scheduled: it runs even while the main
    thread is busy in app code, so keep it to setting a flag."""

    on_shutdown: Callable[[str], object] | None = None
    """Called in the master with the signal's name when a graceful shutdown begins,
    before the workers are told (the server closes its listening sockets here)."""

    setup: Callable[[int], object] | None = None
    """Called in each worker with its id, on its main thread before ``run`` and before
    any event loop runs (import the app here: WSGI frameworks expect no running
    loop). Raising ends the worker as a crash in ``run`` would."""

    shutdown_delay: float = 0.0
    """Lame duck: seconds between a shutdown signal and the start of the graceful
    shutdown, during which the workers keep serving (a load balancer may still
    route to us). A second shutdown signal meanwhile is ignored, as during a drain."""

    on_rolling_restart: Callable[[str], object] | None = None
    """Called in the master with ``"begin"`` and ``"done"`` around each rolling
    restart (SIGUSR1, ``Supervisor.restart``, or a worker's replacement)."""

    announces_draining: bool = False
    """If true, each worker calls ``kamisama_server.draining()`` once it takes no new
    work after a stop signal; a rolling restart then says "done" only when every
    predecessor has (or has exited), so work taken after "done" is the successors'."""

    heartbeat_timeout: float | None = None
    """For an async ``run``: its event loop beats to the master; a ready worker
    whose loop has not beaten for this many seconds (stuck in CPU-bound code) has
    its stack dumped (``faulthandler``) and is replaced, its successor started first."""


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(KamisamaOptions))
_OPTIONAL_CALLABLES = (
    "shutdown",
    "on_ready",
    "before_fork",
    "loop_factory",
    "on_sibling",
    "on_shutdown",
    "lend_fds",
    "on_stop_requested",
    "on_rolling_restart",
    "setup",
)


def resolve_options(args: tuple[Any, ...], kwargs: dict[str, Any]) -> KamisamaOptions:
    """Turn any accepted call form into validated ``KamisamaOptions``.

    Forms: ``(run)``, ``(**options)``, ``(mapping)``, ``(KamisamaOptions)``;
    keyword arguments may complete or override the positional form.
    """
    if len(args) > 1:
        raise TypeError(f"kamisama() takes one positional argument, got {len(args)}")
    given: dict[str, Any] = {}
    if args:
        (first,) = args
        if isinstance(first, KamisamaOptions):
            given = {name: getattr(first, name) for name in _FIELD_NAMES}
        elif isinstance(first, Mapping):
            given = dict(first)
        elif callable(first):
            given = {"run": first}
        else:
            raise TypeError(
                "kamisama() expects a run function, a mapping of options or "
                f"KamisamaOptions, not {type(first).__name__}"
            )
    given.update(kwargs)
    unknown = sorted(str(key) for key in given if key not in _FIELD_NAMES)
    if unknown:
        raise TypeError(
            f"unknown kamisama option(s): {', '.join(unknown)}; "
            f"expected some of: {', '.join(_FIELD_NAMES)}"
        )
    if "run" not in given:
        raise TypeError("kamisama() needs a run function: kamisama(run) or kamisama(run=...)")
    _check_callables(given)
    given["workers"] = _resolve_workers(given.get("workers"))
    given["timeout"] = _check_timeout(given.get("timeout", 10.0))
    given["shutdown_delay"] = _check_timeout(given.get("shutdown_delay", 0.0))
    if given.get("heartbeat_timeout") is not None:
        given["heartbeat_timeout"] = _check_timeout(given["heartbeat_timeout"]) or None
    for flag in ("manual_ready", "fail_fast", "announces_draining"):
        if flag in given and not isinstance(given[flag], bool):
            raise TypeError(f"{flag} must be a bool, not {type(given[flag]).__name__}")
    return KamisamaOptions(**given)


def _check_callables(given: dict[str, Any]) -> None:
    if not callable(given["run"]):
        raise TypeError(f"run must be callable, not {type(given['run']).__name__}")
    for name in _OPTIONAL_CALLABLES:
        value = given.get(name)
        if value is not None and not callable(value):
            raise TypeError(f"{name} must be callable or None, not {type(value).__name__}")


def _resolve_workers(workers: object) -> int:
    """An explicit count wins; else ``WEB_CONCURRENCY``; else the CPU count."""
    if workers is None:
        env = os.environ.get("WEB_CONCURRENCY")
        if env is not None and env.strip():
            try:
                workers = int(env.strip())
            except ValueError:
                raise ValueError(
                    f"WEB_CONCURRENCY must be a whole number of workers, got {env!r}"
                ) from None
            if workers < 1:
                raise ValueError(f"WEB_CONCURRENCY must be at least 1, got {env!r}")
            return workers
        return os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"workers must be an int, not {type(workers).__name__}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return workers


def _check_timeout(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be a non-negative number of seconds, got {timeout}")
    return float(timeout)
