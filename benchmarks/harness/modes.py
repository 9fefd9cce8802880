"""How long and how wide a run is: full (the numbers to publish), quick (about four minutes),
smoke (a few seconds, only proves the harness works; asserts nothing about speed)."""

from __future__ import annotations

from dataclasses import dataclass

from . import contenders as c


@dataclass(frozen=True)
class Mode:
    name: str
    rounds: int  # throughput rounds (round-robin over all cells each round)
    duration_s: int  # one wrk run (wrk takes whole seconds)
    warmup_requests: int  # unrecorded requests per cell before round 1
    wrk_threads: int
    connections: int
    workers: int  # workers per server for throughput and loss
    startup_rounds: int
    startup_workers: int
    loss_rounds: int
    loss_clients: int
    loss_warm_s: float  # load before the signal
    loss_deadline_s: float  # signal -> end of the test at the latest
    throughput: dict[str, tuple[str, ...]]
    startup: dict[str, tuple[str, ...]]
    loss: tuple[str, ...]
    balance: tuple[str, ...]
    balance_workers: tuple[int, ...]
    balance_rounds: int
    balance_connections: int  # opened at once, one GET /pid on each
    nginx: bool = True


FULL = Mode(
    name="full",
    rounds=5,
    duration_s=5,
    warmup_requests=5000,
    wrk_threads=2,
    connections=64,
    workers=2,
    startup_rounds=5,
    startup_workers=4,
    loss_rounds=3,
    loss_clients=32,
    loss_warm_s=1.5,
    loss_deadline_s=15.0,
    throughput=c.THROUGHPUT,
    startup=c.STARTUP,
    loss=c.LOSS,
    balance=c.BALANCE,
    balance_workers=c.BALANCE_WORKERS,
    balance_rounds=3,
    balance_connections=64,
)

QUICK = Mode(
    name="quick",
    rounds=3,
    duration_s=1,
    warmup_requests=2000,
    wrk_threads=2,
    connections=64,
    workers=2,
    startup_rounds=2,
    startup_workers=4,
    loss_rounds=1,
    loss_clients=32,
    loss_warm_s=0.7,
    loss_deadline_s=12.0,
    throughput=c.THROUGHPUT,
    startup=c.STARTUP,
    loss=c.LOSS,
    balance=c.BALANCE,
    balance_workers=c.BALANCE_WORKERS,
    balance_rounds=3,
    balance_connections=64,
)

SMOKE = Mode(
    name="smoke",
    rounds=1,
    duration_s=1,
    warmup_requests=100,
    wrk_threads=1,
    connections=8,
    workers=2,
    startup_rounds=1,
    startup_workers=2,
    loss_rounds=1,
    loss_clients=8,
    loss_warm_s=0.4,
    loss_deadline_s=4.0,
    throughput={
        "hello-wsgi": ("us-wsgi", "gunicorn-sync"),
        "django-sqlite": ("us-wsgi", "gunicorn-sync"),
    },
    startup={"flask": ("us-wsgi", "gunicorn-sync")},
    loss=("us-wsgi", "gunicorn-sync"),
    balance=("us-wsgi", "gunicorn-sync"),
    balance_workers=(2,),
    balance_rounds=1,
    balance_connections=64,
)

MODES = {m.name: m for m in (FULL, QUICK, SMOKE)}
