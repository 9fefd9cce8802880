"""Benchmark kamisama-serve against its peers in one interleaved run.

Usage (from the repo root; run.sh prepares the venv, wrk and nginx first):
    benchmarks/.venv/bin/python benchmarks/run.py [--quick | --smoke]

Writes benchmarks/results/<date>[-quick].{md,json,png} and the summary in
benchmarks/README.md; --smoke writes to benchmarks/results/tmp/ and only checks that the
harness works (it asserts nothing about speed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import chart, machine, report
from harness.contenders import BENCH_DIR
from harness.modes import MODES
from harness.procs import Registry
from harness.suites import Bench, Results, log

RESULTS_DIR = BENCH_DIR / "results"


def _prune_logs(keep: int = 5) -> None:
    """Keep the server logs of the last few runs only (they live in the gitignored tmp/)."""
    runs = sorted((RESULTS_DIR / "tmp").glob("logs-*"), key=lambda p: p.stat().st_mtime)
    for old in runs[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _terminate(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM/SIGHUP to the harness: unwind through `finally`, which stops every server."""
    raise SystemExit(128 + signum)


def _smoke_checks(results: Results, registry: Registry, outputs: list[Path]) -> list[str]:
    """What --smoke proves: every suite produced a row from a peer, files were written, and
    no process is left. No speed is asserted."""
    problems = []
    if not any(r["requests"] > 0 for r in results.throughput if r["contender"] == "gunicorn-sync"):
        problems.append("no throughput row for gunicorn-sync")
    if not any(r["contender"] == "nginx" for r in results.throughput):
        problems.append("no throughput row for nginx")
    if not any(r["ready_s"] > 0 for r in results.startup):
        problems.append("no startup row")
    if not any(r["sent"] > 0 for r in results.loss):
        problems.append("no loss row")
    if not any(r["app"] == "django-sqlite" and r["requests"] > 0 for r in results.throughput):
        problems.append("no throughput row on django-sqlite")
    if not any(sum(r["counts"]) > 0 for r in results.balance):
        problems.append("no balance row")
    problems += [f"missing output {p}" for p in outputs if not p.exists() or p.stat().st_size == 0]
    if registry.servers:
        problems.append(f"servers still registered: {[s.name for s in registry.servers]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="about four minutes")
    group.add_argument("--smoke", action="store_true", help="seconds; checks the harness only")
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results)")
    parser.add_argument("--render", type=Path, help="only redraw .md/.png from a run's .json")
    args = parser.parse_args(argv)
    if args.render:
        results = Results(**json.loads(args.render.read_text()))
        chart.draw(results, args.render.with_suffix(".png"))
        md_path = args.render.with_suffix(".md")
        md_path.write_text(report.markdown(results, args.render.with_suffix(".png").name))
        if args.render.resolve().parent == RESULTS_DIR.resolve():
            report.update_readme(
                BENCH_DIR / "README.md",
                results,
                md_path.resolve(),
                md_path.with_suffix(".png").resolve(),
            )
        return 0
    mode = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]

    stamp = time.strftime("%Y-%m-%d")
    out_dir = args.out or (RESULTS_DIR / "tmp" if args.smoke else RESULTS_DIR)
    name = stamp if mode.name == "full" else f"{stamp}-{mode.name}"
    log_dir = RESULTS_DIR / "tmp" / f"logs-{name}-{os.getpid()}"

    _prune_logs()
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    results = Results(mode=mode.name)
    results.meta = machine.describe()
    results.meta["started"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    results.meta["params"] = {
        k: v for k, v in vars(mode).items() if isinstance(v, (int, float, str))
    }
    started = time.monotonic()
    registry = Registry(log_dir)
    try:
        with registry.running():
            bench = Bench(mode, registry, results)
            log(f"mode {mode.name}; server logs in {log_dir}")
            bench.check_ours()
            bench.throughput()
            bench.startup()
            bench.loss()
            bench.balance()
    except KeyboardInterrupt:
        log("interrupted: every server started by this run has been stopped")
        return 130
    results.meta["seconds"] = round(time.monotonic() - started, 1)
    results.meta["loadavg_end"] = os.getloadavg()

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = (out_dir / f"{name}{ext}" for ext in (".json", ".md", ".png"))
    json_path.write_text(json.dumps(results.__dict__, indent=1, default=str) + "\n")
    chart.draw(results, png_path)
    md_path.write_text(report.markdown(results, png_path.name))
    if mode.name != "smoke":
        report.update_readme(BENCH_DIR / "README.md", results, md_path, png_path)
    log(f"wrote {md_path} ({results.meta['seconds']} s)")

    if mode.name == "smoke":
        problems = _smoke_checks(results, registry, [json_path, md_path, png_path])
        for problem in problems:
            log(f"SMOKE FAILED: {problem}")
        if problems:
            return 1
        log("smoke OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
