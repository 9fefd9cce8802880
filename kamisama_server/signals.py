"""Which signals exist on this platform and what each one means to kamisama.

The seed (the Node library) treats five signals as "shut down gracefully";
beyond the seed, SIGUSR1 asks for a rolling restart and SIGTTIN/SIGTTOU add or
remove one worker. Names travel as ``str`` ("SIGINT") because that is what the
user's shutdown hook receives.
"""

from __future__ import annotations

import signal

_SHUTDOWN_NAMES = ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR2", "SIGBREAK")

SHUTDOWN_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal.Signals, name) for name in _SHUTDOWN_NAMES if hasattr(signal.Signals, name)
)
"""Graceful shutdown: the user's hook runs once per worker with the signal's name."""

RESTART_SIGNAL: signal.Signals | None = getattr(signal.Signals, "SIGUSR1", None)
"""Zero-downtime rolling restart: replace workers one at a time."""

SCALE_UP_SIGNAL: signal.Signals | None = getattr(signal.Signals, "SIGTTIN", None)
SCALE_DOWN_SIGNAL: signal.Signals | None = getattr(signal.Signals, "SIGTTOU", None)

PARENT_GONE = "SIGHUP"
"""The name a worker's hook receives when the master died: the hang-up of its parent."""


def signal_name(signum: int) -> str:
    """``signal_name(15) == "SIGTERM"``; unknown numbers read as ``"signal N"``."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def is_shutdown_name(name: str) -> bool:
    """True for the names a shutdown hook may receive on this platform."""
    return any(sig.name == name for sig in SHUTDOWN_SIGNALS)
