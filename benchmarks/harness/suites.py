"""The measurements, each interleaved: every round visits every contender once (in a
rotated order), so slow drifts of the shared machine hit everyone alike; medians are taken
over rounds later. A contender that fails is recorded with the reason and skipped from then
on; nothing else stops."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from . import balance, loss, nginx, probe, wrk
from .contenders import APPS, APPS_DIR, CONTENDERS, LOSS_APP, VENV_BIN, Contender
from .modes import Mode
from .procs import Registry, Server, free_port

T = TypeVar("T")
READY_TIMEOUT = 60.0


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rotated(items: Sequence[T], by: int) -> list[T]:
    if not items:
        return []
    k = by % len(items)
    return [*items[k:], *items[:k]]


def prepare_db(folder: Path) -> Path:
    """Create the SQLite file the *-sqlite apps read, once, before any server starts (so
    workers starting together never race to create it); apps/bench_db.py owns the schema."""
    spec = importlib.util.spec_from_file_location("bench_db", APPS_DIR / "bench_db.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path: Path = module.ensure(folder / "bench.sqlite3")
    return path


def missing_module(contender: Contender) -> str | None:
    """Why an optional contender cannot run here (its module is not installed), or None."""
    if contender.module and importlib.util.find_spec(contender.module) is None:
        return (
            f"{contender.label}: Python module `{contender.module}` is not installed in the "
            f"bench venv (run.sh could not install `{contender.package}` here); skipped"
        )
    return None


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(APPS_DIR)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("WEB_CONCURRENCY", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@dataclass
class Results:
    mode: str
    throughput: list[dict[str, Any]] = field(default_factory=list)
    startup: list[dict[str, Any]] = field(default_factory=list)
    loss: list[dict[str, Any]] = field(default_factory=list)
    balance: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # "suite/app/contender" -> why
    ours_status: str = "not checked"
    meta: dict[str, Any] = field(default_factory=dict)


class Bench:
    """Runs the suites of one mode, sharing one process registry and one log folder."""

    def __init__(self, mode: Mode, registry: Registry, results: Results) -> None:
        self.mode = mode
        self.registry = registry
        self.results = results
        self.env = server_env()
        self.env["BENCH_SQLITE_PATH"] = str(prepare_db(registry.log_dir))
        self.skip: set[str] = set()  # contender keys left out of the whole run
        for key, contender in CONTENDERS.items():
            why = missing_module(contender)
            if why:
                self.skip.add(key)
                self.fail(f"setup/{key}", why)

    def launch(self, contender: Contender, app_key: str | None, workers: int) -> Server:
        port = free_port()
        if contender.key == "nginx":
            tmp = Path(tempfile.mkdtemp(prefix="nginx-", dir=self.registry.log_dir))
            argv = nginx.command(tmp, port, workers)
        else:
            argv = contender.command(APPS[app_key] if app_key else None, port, workers)
        return self.registry.launch(contender.key, argv, port, APPS_DIR, self.env)

    def start_ready(self, contender: Contender, app_key: str | None, workers: int) -> Server:
        """Launch and wait until every worker answered; raises StartFailed with the log."""
        try:
            server = self.launch(contender, app_key, workers)
        except OSError as exc:
            raise probe.StartFailed(f"cannot launch: {exc}") from exc
        try:
            if contender.key == "nginx":
                probe.wait_answer(server, READY_TIMEOUT)
            else:
                probe.wait_workers(server, workers, READY_TIMEOUT)
        except probe.StartFailed as exc:
            tail = server.log_tail(6)
            self.registry.stop(server, grace=2.0)
            raise probe.StartFailed(f"{exc}; log: {tail}", log_tail=tail) from exc
        return server

    def fail(self, key: str, reason: str) -> None:
        self.results.failures[key] = reason.replace("\n", " | ")[:600]
        log(f"FAILED {key}: {reason.splitlines()[0][:200]}")

    # --- our server: one probe up front, so a missing or broken build is one clear line ---
    def check_ours(self) -> None:
        ours = CONTENDERS["us-wsgi"]
        argv0 = ours.command(APPS["hello-wsgi"], 0, 1)[0]
        if not (os.path.exists(argv0) and os.access(argv0, os.X_OK)):
            self._skip_ours(f"kamisama-serve not found ({argv0})")
            return
        try:
            server = self.start_ready(ours, "hello-wsgi", 2)
        except probe.StartFailed as exc:
            self._skip_ours(f"kamisama-serve does not serve yet: {exc}".split("; log:")[0])
            if exc.log_tail:
                self.results.ours_status += f"; last log line: {exc.log_tail.splitlines()[-1]}"
            return
        self.registry.stop(server)
        self.results.ours_status = f"available ({argv0})"
        log(f"our server: {self.results.ours_status}")

    def _skip_ours(self, reason: str) -> None:
        self.results.ours_status = "SKIPPED: " + reason.replace("\n", " | ")[:600]
        self.skip |= {k for k, c in CONTENDERS.items() if c.ours}
        log(f"our server {self.results.ours_status}")

    # --- throughput, latency, CPU per request ---
    def throughput(self) -> None:
        mode = self.mode
        cells = [(a, k) for a, ks in mode.throughput.items() for k in ks if k not in self.skip]
        if mode.nginx:
            cells.append(("static", "nginx"))
        servers: dict[tuple[str, str], Server] = {}
        launched: list[tuple[tuple[str, str], Server]] = []
        try:
            for app_key, key in cells:  # launch all at once, then wait for each
                contender = NGINX if key == "nginx" else CONTENDERS[key]
                try:
                    launched.append(((app_key, key), self.launch(contender, app_key, mode.workers)))
                except OSError as exc:
                    self.fail(f"throughput/{app_key}/{key}", f"cannot launch: {exc}")
            for cell, server in launched:
                try:
                    if cell[1] == "nginx":
                        probe.wait_answer(server, READY_TIMEOUT)
                    else:
                        probe.wait_workers(server, mode.workers, READY_TIMEOUT)
                    servers[cell] = server
                except probe.StartFailed as exc:
                    self.fail(
                        f"throughput/{cell[0]}/{cell[1]}", f"{exc}; log: {server.log_tail(6)}"
                    )
                    self.registry.stop(server, grace=2.0)
            live = [c for c in cells if c in servers]
            log(f"throughput: {len(live)} servers ready; warm-up")
            for cell in live:
                why = self._warm_up(servers[cell])
                if why:
                    self.fail(f"throughput/{cell[0]}/{cell[1]}", why)
                    self.registry.stop(servers.pop(cell), grace=2.0)
            for rnd in range(mode.rounds):
                live = [c for c in live if c in servers]
                log(f"throughput round {rnd + 1}/{mode.rounds} ({len(live)} cells)")
                for cell in rotated(live, rnd):
                    self._wrk(cell, servers, mode.duration_s, record=rnd)
        finally:
            self.registry.stop_many(list(servers.values()))

    def _warm_up(self, server: Server) -> str | None:
        """Warm a server up; None if it answered GET / with 200s, else why its cell is out."""
        try:
            warm = probe.warm_up(server, self.mode.warmup_requests)
        except (OSError, asyncio.TimeoutError) as exc:
            return f"warm-up failed: {exc!r}"
        if warm.healthy():
            return None
        cause = server.last_exception()
        return f"answers errors: {warm.describe()}" + (
            f"; last exception in its log: {cause}" if cause else ""
        )

    def _wrk(
        self, cell: tuple[str, str], servers: dict[tuple[str, str], Server], secs: int, record: int
    ) -> None:
        server = servers.get(cell)
        if server is None:
            return
        app_key, key = cell
        mode = self.mode
        try:
            if not server.alive():
                raise RuntimeError(
                    f"server exited ({server.proc.returncode}); {server.log_tail(6)}"
                )
            busy0, by_pid0, self0 = (
                wrk.machine_busy_seconds(),
                server.cpu_by_pid(),
                wrk.self_cpu_seconds(),
            )
            t0 = time.perf_counter()
            res = wrk.run(server.port, "/", secs, mode.wrk_threads, mode.connections)
            wall = time.perf_counter() - t0
            by_pid1 = server.cpu_by_pid()
            deltas = sorted((t - by_pid0.get(pid, 0.0) for pid, t in by_pid1.items()), reverse=True)
            shares = worker_shares(server.worker_pids, by_pid0, by_pid1)
            cpu = sum(deltas)
            busy = wrk.machine_busy_seconds() - busy0
            own = wrk.self_cpu_seconds() - self0
        except (RuntimeError, ValueError, OSError) as exc:
            self.fail(f"throughput/{app_key}/{key}", str(exc))
            servers.pop(cell, None)
            self.registry.stop(server, grace=2.0)
            return
        bad = res.socket_errors + res.non_2xx
        if bad > 0.01 * max(1, res.requests):
            self.fail(
                f"throughput/{app_key}/{key}",
                f"wrk counted {res.socket_errors} socket errors and {res.non_2xx} non-2xx answers "
                f"for {res.requests} completed requests (a response wrk's parser rejects, e.g. "
                "a duplicate Content-Length, shows as read errors); its figures are not valid",
            )
        self.results.throughput.append(
            {
                "app": app_key,
                "contender": key,
                "round": record,
                "rps": res.rps,
                "p50_ms": res.p50_ms,
                "p99_ms": res.p99_ms,
                "max_ms": res.max_ms,
                "requests": res.requests,
                "socket_errors": res.socket_errors,
                "non_2xx": res.non_2xx,
                "cpu_us_per_req": cpu / res.requests * 1e6 if res.requests else None,
                "server_cores": cpu / wall,
                # The busiest processes' CPU in % of a core: shows how evenly workers share.
                "split_pct": [round(100 * d / wall) for d in deltas[: mode.workers]],
                # Each worker's share of the workers' CPU, busiest first ([52, 48]).
                "worker_share_pct": shares,
                "wrk_cores": res.wrk_cpu_s / wall,
                "other_cores": max(0.0, busy - cpu - res.wrk_cpu_s - own) / wall,
            }
        )

    # --- time to N workers ready, and memory of the tree ---
    def startup(self) -> None:
        mode = self.mode
        cells = [(a, k) for a, ks in mode.startup.items() for k in ks if k not in self.skip]
        for rnd in range(mode.startup_rounds):
            cells = [c for c in cells if f"startup/{c[0]}/{c[1]}" not in self.results.failures]
            log(f"startup round {rnd + 1}/{mode.startup_rounds} ({len(cells)} cells)")
            for app_key, key in rotated(cells, rnd):
                try:
                    server = self.start_ready(CONTENDERS[key], app_key, mode.startup_workers)
                except probe.StartFailed as exc:
                    self.fail(f"startup/{app_key}/{key}", str(exc))
                    continue
                ready = time.perf_counter() - server.started_at
                uss, pss = server.memory()
                stop_s = self.registry.stop(server)
                self.results.startup.append(
                    {
                        "app": app_key,
                        "contender": key,
                        "round": rnd,
                        "workers": mode.startup_workers,
                        "ready_s": ready,
                        "uss_mb": uss / 2**20,
                        "pss_mb": pss / 2**20,
                        "stop_s": stop_s,
                    }
                )

    # --- requests lost on SIGTERM and on rolling restart ---
    def loss(self) -> None:
        mode = self.mode
        keys = [k for k in mode.loss if k not in self.skip]
        for rnd in range(mode.loss_rounds):
            log(f"loss round {rnd + 1}/{mode.loss_rounds} ({len(keys)} contenders x 2)")
            for key in rotated(keys, rnd):
                contender = CONTENDERS[key]
                for scenario in ("terminate", "restart"):
                    self._loss_one(contender, scenario, rnd)

    def _loss_one(self, contender: Contender, scenario: str, rnd: int) -> None:
        sig = signal.SIGTERM if scenario == "terminate" else contender.restart_signal
        where = f"loss/{scenario}/{contender.key}"
        if sig is None or where in self.results.failures:
            return
        app_key = LOSS_APP[contender.interface]
        try:
            server = self.start_ready(contender, app_key, self.mode.workers)
        except probe.StartFailed as exc:
            self.fail(where, str(exc))
            return
        try:
            res = loss.run(
                server,
                scenario,
                sig,
                self.mode.loss_clients,
                self.mode.loss_warm_s,
                self.mode.workers,
                self.mode.loss_deadline_s,
            )
        finally:
            self.registry.stop(server)
        row = asdict(res)
        row["reasons"] = dict(res.reasons)
        row.update({"contender": contender.key, "app": app_key, "round": rnd})
        self.results.loss.append(row)

    # --- how a burst of keep-alive connections spreads over the workers ---
    def balance(self) -> None:
        mode = self.mode
        keys = [k for k in mode.balance if k not in self.skip]
        for workers in mode.balance_workers:
            log(f"balance, {workers} workers ({len(keys)} servers x {mode.balance_rounds} rounds)")
            for key in keys:
                self._balance_one(CONTENDERS[key], workers)

    def _balance_one(self, contender: Contender, workers: int) -> None:
        where = f"balance/{workers}/{contender.key}"
        try:
            server = self.start_ready(contender, LOSS_APP[contender.interface], workers)
        except probe.StartFailed as exc:
            self.fail(where, str(exc))
            return
        try:
            for rnd in range(self.mode.balance_rounds):
                res = balance.run_round(server.port, self.mode.balance_connections)
                self.results.balance.append(
                    {
                        "contender": contender.key,
                        "workers": workers,
                        "round": rnd,
                        "connections": self.mode.balance_connections,
                        "connected": res.connected,
                        "unanswered": res.unanswered,
                        "counts": balance.per_worker(res.by_pid, server.worker_pids),
                        "seconds": res.seconds,
                    }
                )
                time.sleep(0.2)  # let the server close the last round's connections
        except (OSError, asyncio.TimeoutError) as exc:
            self.fail(where, f"burst failed: {exc!r}")
        finally:
            self.registry.stop(server)


def worker_shares(
    workers: set[int], before: dict[int, float], after: dict[int, float]
) -> list[int]:
    """Each worker's CPU over a run in % of all workers' CPU, busiest first (the master and
    helper processes left out: a worker is a pid that answered GET /pid)."""
    used = sorted(
        (after[p] - before[p] for p in workers if p in before and p in after), reverse=True
    )
    total = sum(used)
    return [round(100 * u / total) for u in used] if total > 0 else []


NGINX = Contender("nginx", "nginx (static return)", "static", (), "nginx")
