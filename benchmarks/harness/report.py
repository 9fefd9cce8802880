"""The markdown report of one run, and the summary block it keeps in benchmarks/README.md."""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

from .contenders import APPS, CONTENDERS, STARTUP_REFERENCES
from .stats import (
    Row,
    answered_well,
    best_peer,
    fmt,
    fmt_ratio,
    fmt_shares,
    label,
    medians,
    ratio,
    reference,
    throughput_table,
    worker_shares,
)
from .suites import Results

START, END = "<!-- results:start -->", "<!-- results:end -->"
CAVEAT = (
    "Only ratios **within one run** mean anything: the machine has 2 cores shared by the "
    "load generator (wrk), the harness, and other engineers' test runs, so absolute numbers "
    "drift between runs. Each round visits every contender once (interleaved, rotated "
    "order); figures are medians over rounds. *other load* is the CPU (in cores) that "
    "neither the server nor wrk used during the run: anything well above 0 means the "
    "machine was busy with something else."
)


def _row(*cells: str) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _get(row: Row | None, field: str) -> float | None:
    value = row.get(field) if row else None
    return None if value is None else float(value)


def _name(key: str) -> str:
    return f"**{label(key)}**" if CONTENDERS[key].ours else label(key)


def _throughput_section(results: Results) -> list[str]:
    table = throughput_table(results.throughput)
    nginx = table.get(("static", "nginx"), {}).get("rps")
    meta = results.meta.get("params", {})
    shares = worker_shares(results.throughput)
    lines = [
        "## Throughput, latency and server CPU per request",
        "",
        f"{meta.get('workers', 2)} workers per server; `wrk -t{meta.get('wrk_threads')} "
        f"-c{meta.get('connections')} -d{meta.get('duration_s')}s` on `/`, "
        f"{meta.get('rounds')} interleaved rounds, medians. CPU/req = the server's whole "
        "process tree's user+system CPU over the requests wrk completed. *worker share* = "
        "each worker's part of the workers' CPU during the run (a worker = a pid that "
        "answered `GET /pid`), busiest first; **⚠** marks a worker below half its fair share.",
        "",
    ]
    if nginx:
        lines += [
            f"nginx reference (`return 200` from its config, 2 workers): **{fmt(nginx)} req/s**, "
            f"{fmt(table[('static', 'nginx')]['cpu_us_per_req'], 1)} µs CPU/req.",
            "",
        ]
    for app in APPS:
        lines += _throughput_app(app, table, shares, nginx, results.failures)
    return lines


def _throughput_app(
    app: str,
    table: dict[tuple[Any, ...], Row],
    shares: dict[tuple[str, str], list[float]],
    nginx: float | None,
    failures: dict[str, str],
) -> list[str]:
    """One app's table: a row per server that ran, then a line per server that failed."""
    rows = [(key, row) for (a, key), row in table.items() if a == app]
    failed = _failed_cells(failures, app)
    if not rows and not failed:
        return []
    ref = reference(app, table)
    ref_row = table.get((app, ref)) if ref else None
    lines = [
        f"### {APPS[app].title} (`{APPS[app].target}`): ratios against "
        f"**{label(ref) if ref else 'n/a'}**",
        "",
        _row(
            "server",
            "req/s",
            "worker share",
            "x ref",
            "of nginx",
            "p50 ms",
            "p99 ms",
            "CPU µs/req",
            "x ref",
            "other load",
            "errors",
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ref_rps = ref_row["rps"] if ref_row else None
    ref_cpu = ref_row["cpu_us_per_req"] if ref_row else None
    for key, row in sorted(rows, key=lambda kr: -(kr[1]["rps"] or 0)):
        errors = int((row["socket_errors"] or 0) + (row["non_2xx"] or 0))
        lines.append(
            _row(
                _name(key),
                fmt(row["rps"]) if answered_well(row) else f"{fmt(row['rps'])} (**errors**)",
                fmt_shares(shares.get((app, key))),
                fmt_ratio(ratio(row["rps"], ref_rps)),
                fmt_ratio(ratio(row["rps"], nginx)),
                fmt(row["p50_ms"], 2),
                fmt(row["p99_ms"], 2),
                fmt(row["cpu_us_per_req"], 1),
                fmt_ratio(ratio(row["cpu_us_per_req"], ref_cpu)),
                fmt(row["other_cores"], 2),
                str(errors),
            )
        )
    for key, _why in failed:
        if (app, key) not in table:
            lines.append(_row(_name(key), "**failed**", *["—"] * 9))
    lines.append("")
    lines += [f"- {_name(key)} **failed**: {why}" for key, why in failed]
    return [*lines, ""] if failed else lines


def _failed_cells(failures: dict[str, str], app: str) -> list[tuple[str, str]]:
    """(contender, why) for every throughput cell of this app that failed."""
    prefix = f"throughput/{app}/"
    return [(k[len(prefix) :], why) for k, why in sorted(failures.items()) if k.startswith(prefix)]


def _startup_section(results: Results) -> list[str]:
    table = medians(
        results.startup, ("app", "contender"), ("ready_s", "uss_mb", "pss_mb", "stop_s")
    )
    if not table:
        return []
    workers = results.startup[0]["workers"]
    lines = [
        f"## Startup and memory ({workers} workers)",
        "",
        f"Ready = launch until {workers} distinct worker pids answered `GET /pid` (same probe for "
        "everyone). Memory = summed USS / PSS of the whole process tree right after that. "
        "Stop = SIGTERM until the whole tree exited (idle).",
        "",
    ]
    for app, refs in STARTUP_REFERENCES.items():
        rows = [(key, row) for (a, key), row in table.items() if a == app]
        if not rows:
            continue
        ref_rows = [(r, table.get((app, r))) for r in refs]
        head = " | ".join(f"ready x {label(r)} | USS x {label(r)}" for r in refs)
        lines += [
            f"### {APPS[app].title}",
            "",
            f"| server | ready s | {head} | USS MB | PSS MB | stop s |",
            "|---|---:|" + "---:|---:|" * len(refs) + "---:|---:|---:|",
        ]
        for key, row in sorted(rows, key=lambda kr: kr[1]["ready_s"] or 0):
            cells = " | ".join(
                f"{fmt_ratio(ratio(row['ready_s'], _get(rr, 'ready_s')))} "
                f"| {fmt_ratio(ratio(row['uss_mb'], _get(rr, 'uss_mb')))}"
                for _, rr in ref_rows
            )
            name = f"**{label(key)}**" if CONTENDERS[key].ours else label(key)
            lines.append(
                f"| {name} | {fmt(row['ready_s'], 2)} | {cells} | {fmt(row['uss_mb'], 1)} "
                f"| {fmt(row['pss_mb'], 1)} | {fmt(row['stop_s'], 2)} |"
            )
        lines.append("")
    return lines


def _loss_section(results: Results) -> list[str]:
    if not results.loss:
        return []
    table = medians(results.loss, ("contender", "scenario"), ("lost", "sent", "refused", "seconds"))
    reasons: dict[tuple[str, str], dict[str, int]] = {}
    done: dict[str, list[bool]] = {}
    for row in results.loss:
        merged = reasons.setdefault((row["contender"], row["scenario"]), {})
        for reason, count in row["reasons"].items():
            merged[reason] = merged.get(reason, 0) + count
        if row["restart_done"] is not None:
            done.setdefault(row["contender"], []).append(row["restart_done"])
    ref = table.get(("gunicorn-sync", "terminate"))
    meta = results.meta.get("params", {})
    lines = [
        "## Requests lost on SIGTERM and on rolling restart",
        "",
        f"{meta.get('loss_clients', 32)} keep-alive clients (our own asyncio client: it can "
        "tell a complete 200 from a reset or a truncated answer) on `/slow` (50 ms), "
        f"{meta.get('workers', 2)} workers; the signal goes to the master "
        "mid-load. *lost* = requests written that got no complete 200. *refused* = connects "
        "refused (after SIGTERM: the server is gone, expected; during a restart: downtime). "
        "*restart s* = signal until every worker was new and no old one had answered for "
        "0.5 s (or the deadline). "
        f"Medians over {max(r['round'] for r in results.loss) + 1} round(s); the *vs gunicorn "
        "sync* column puts the same figure of gunicorn sync beside ours.",
        "",
        _row(
            "server",
            "SIGTERM: lost / sent",
            "vs gunicorn sync",
            "restart signal",
            "restart: lost / sent",
            "refused",
            "all workers replaced",
            "restart s",
            "why lost",
        ),
        "|---|---:|---:|---|---:|---:|---|---:|---|",
    ]
    for key in dict.fromkeys(r["contender"] for r in results.loss):
        term, rest = table.get((key, "terminate")), table.get((key, "restart"))
        sig = CONTENDERS[key].restart_signal
        why = "; ".join(
            f"{scn}: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons[(key, scn)].items()))
            for scn in ("terminate", "restart")
            if reasons.get((key, scn))
        )
        lines.append(
            _row(
                _name(key),
                _pair(term),
                f"{fmt(_get(term, 'lost'))} vs {fmt(_get(ref, 'lost'))}",
                sig.name if sig else "n/a",
                _pair(rest) if sig else "n/a",
                fmt(_get(rest, "refused")),
                _done(done.get(key)),
                fmt(_get(rest, "seconds"), 1),
                why or "—",
            )
        )
    lines.append("")
    return lines


BALANCE_LOW, BALANCE_HIGH = 0.4, 1.6  # a worker outside this x its fair share is flagged


def balance_cells(results: Results) -> dict[tuple[str, int], list[Row]]:
    """(contender, workers) -> its balance rounds, in order."""
    cells: dict[tuple[str, int], list[Row]] = {}
    for row in sorted(results.balance, key=lambda r: r["round"]):
        cells.setdefault((row["contender"], row["workers"]), []).append(row)
    return cells


def balance_range(rounds: list[Row]) -> tuple[float, float]:
    """The fewest and most connections one worker got in any round, as a fraction of the
    fair share (connections / workers)."""
    fractions = [count / (r["connections"] / r["workers"]) for r in rounds for count in r["counts"]]
    return min(fractions), max(fractions)


def _fmt_range(rounds: list[Row]) -> str:
    low, high = balance_range(rounds)
    text = f"{low:.2f}x to {high:.2f}x"
    if low < BALANCE_LOW or high > BALANCE_HIGH:
        return f"**{text} ⚠**"
    return text


def _balance_section(results: Results) -> list[str]:
    cells = balance_cells(results)
    if not cells:
        return []
    first = results.balance[0]
    lines = [
        "## Balance: a burst of keep-alive connections over the workers",
        "",
        f"{first['connections']} TCP connections opened at once (all connected before any "
        "request), then one keep-alive `GET /pid` on each; the pid that answered tells which "
        "worker holds the connection. Per round: connections per worker, busiest first. "
        "*range* = the fewest and the most one worker got in any round, as a fraction of the "
        f"fair share (connections / workers); **⚠** = outside {BALANCE_LOW}x to {BALANCE_HIGH}x. "
        "gunicorn sync answers one connection at a time with `Connection: close` (the "
        "client then closes it), so for it the count says which worker was free to accept "
        "next, not who holds a keep-alive connection.",
        "",
        _row("server", "workers", "per worker, each round", "range of fair share", "unanswered"),
        "|---|---:|---|---:|---:|",
    ]
    for (key, workers), rounds in cells.items():
        lines.append(
            _row(
                _name(key),
                str(workers),
                "; ".join("/".join(str(c) for c in r["counts"]) for r in rounds),
                _fmt_range(rounds),
                str(sum(r["unanswered"] for r in rounds)),
            )
        )
    return [*lines, ""]


def _balance_summary(results: Results) -> list[str]:
    """The balance figures in one line per server, for the README's summary block."""
    cells = balance_cells(results)
    if not cells:
        return []
    counts = sorted({w for _, w in cells})
    lines = [
        "",
        f"Balance ({results.balance[0]['connections']} keep-alive connections at once): the "
        "fewest and the most connections one worker got, as a fraction of its fair share; "
        f"**⚠** outside {BALANCE_LOW}x to {BALANCE_HIGH}x:",
        "",
        _row("server", *(f"{w} workers" for w in counts)),
        "|---|" + "---:|" * len(counts),
    ]
    for key in dict.fromkeys(k for k, _ in cells):
        ranges = (_fmt_range(cells[(key, w)]) if (key, w) in cells else "—" for w in counts)
        lines.append(_row(_name(key), *ranges))
    return lines


def _pair(row: Row | None) -> str:
    return "—" if row is None else f"{fmt(row['lost'])} / {fmt(row['sent'])}"


def _done(values: list[bool] | None) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return "yes" if values[0] else "**no** (old workers still answering at the deadline)"
    return f"{sum(values)} of {len(values)} rounds"


def targets(results: Results) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for each target the issues set."""
    if not any(
        CONTENDERS[r["contender"]].ours for r in results.throughput if r["contender"] in CONTENDERS
    ):
        why = results.ours_status
        return [("all targets", "not measured", f"our server was not benchmarked: {why}")]
    tp = throughput_table(results.throughput)
    st = medians(results.startup, ("app", "contender"), ("ready_s", "uss_mb"))
    ls = medians(results.loss, ("contender", "scenario"), ("lost",))
    out: list[tuple[str, str, str]] = []

    def rps_target(app: str, us: str, peer: str | None, factor: float, what: str) -> None:
        a, b = (
            tp.get((app, us), {}).get("rps"),
            tp.get((app, peer), {}).get("rps") if peer else None,
        )
        r = ratio(a, b)
        out.append(
            (
                f"{what}: ≥ {factor}x {label(peer) if peer else 'peer'}",
                f"{fmt_ratio(r)} ({fmt(a)} vs {fmt(b)} req/s)",
                _verdict(None if r is None else r >= factor),
            )
        )

    rps_target("hello-wsgi", "us-wsgi", "granian-wsgi", 1.2, "WSGI hello req/s")
    cpu = tp.get(("hello-wsgi", "us-wsgi"), {}).get("cpu_us_per_req")
    out.append(
        (
            "WSGI hello: ≤ 25 µs server CPU/req",
            f"{fmt(cpu, 1)} µs",
            _verdict(None if cpu is None else cpu <= 25),
        )
    )
    rps_target("hello-asgi", "us-asgi", "uvicorn", 1.1, "ASGI hello req/s")
    rps_target("flask", "us-wsgi", reference("flask", tp), 1.1, "Flask req/s")
    rps_target("fastapi", "us-asgi", reference("fastapi", tp), 1.1, "FastAPI req/s")
    for app in ("flask-sqlite", "django-sqlite"):
        out += _sqlite_targets(app, tp, results.failures)

    def startup_ratio(app: str, us: str, peer: str, field: str) -> float | None:
        return ratio(st.get((app, us), {}).get(field), st.get((app, peer), {}).get(field))

    for app, us, peer in (
        ("flask", "us-wsgi", "gunicorn-sync"),
        ("fastapi", "us-asgi", "gunicorn-uvicorn"),
    ):
        r = startup_ratio(app, us, peer, "ready_s")
        out.append(
            (
                f"{APPS[app].title}: 4 workers ready ≤ {label(peer)}",
                fmt_ratio(r),
                _verdict(None if r is None else r <= 1.0),
            )
        )
    r = startup_ratio("fastapi", "us-asgi", "uvicorn", "ready_s")
    out.append(
        (
            "FastAPI: 4 workers ready ≤ ½ uvicorn's",
            fmt_ratio(r),
            _verdict(None if r is None else r <= 0.5),
        )
    )
    r = startup_ratio("fastapi", "us-asgi-preload", "uvicorn", "uss_mb")
    out.append(
        (
            "FastAPI --preload: summed USS ≤ ⅓ uvicorn's",
            fmt_ratio(r),
            _verdict(None if r is None else r <= 1 / 3),
        )
    )
    for key in ("us-wsgi", "us-asgi"):
        for scenario, what in (("terminate", "SIGTERM"), ("restart", "rolling restart")):
            lost = ls.get((key, scenario), {}).get("lost")
            ok = None if lost is None else lost == 0
            measured = fmt(lost)
            not_done = [
                r
                for r in results.loss
                if r["contender"] == key
                and r["scenario"] == scenario
                and r["restart_done"] is False
            ]
            if not_done:
                ok, measured = False, f"{measured}, but the restart did not complete"
            out.append((f"{label(key)}: 0 lost on {what}", measured, _verdict(ok)))
    return out


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**not met**")


def _sqlite_targets(
    app: str, tp: dict[tuple[Any, ...], Row], failures: dict[str, str]
) -> list[tuple[str, str, str]]:
    """req/s ≥ 1.2x the best peer on the app, and p99 no worse than that peer's."""
    title, peer = APPS[app].title, best_peer(app, tp)
    wanted = (f"{title} req/s: ≥ 1.2x the best peer", f"{title} p99: ≤ the best peer's")
    failed = failures.get(f"throughput/{app}/us-wsgi")
    us = tp.get((app, "us-wsgi"))
    if failed and (us is None or not answered_well(us)):
        return [(w, f"our server failed: {_short(failed, 160)}", "**not met**") for w in wanted]
    ref = tp.get((app, peer)) if peer else None
    r = ratio(_get(us, "rps"), _get(ref, "rps"))
    us_p99, ref_p99 = _get(us, "p99_ms"), _get(ref, "p99_ms")
    versus = f" ({label(peer)})" if peer else ""
    return [
        (
            wanted[0] + versus,
            f"{fmt_ratio(r)} ({fmt(_get(us, 'rps'))} vs {fmt(_get(ref, 'rps'))} req/s)",
            _verdict(None if r is None else r >= 1.2),
        ),
        (
            wanted[1] + versus,
            f"{fmt(us_p99, 2)} vs {fmt(ref_p99, 2)} ms (slowest request, median over rounds: "
            f"{fmt(_get(us, 'max_ms'), 1)} vs {fmt(_get(ref, 'max_ms'), 1)} ms)",
            _verdict(None if us_p99 is None or ref_p99 is None else us_p99 <= ref_p99),
        ),
    ]


def _short(text: str, limit: int) -> str:
    """At most `limit` characters, cut at a word, with an ellipsis when cut."""
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " …"


def _targets_section(results: Results) -> list[str]:
    lines = ["## Targets", "", "| target | measured | verdict |", "|---|---|---|"]
    lines += [_row(t, m, v) for t, m, v in targets(results)]
    return [*lines, ""]


def _setup_section(results: Results) -> list[str]:
    meta = results.meta
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    load0, load1 = meta.get("loadavg_start", ()), meta.get("loadavg_end", ())
    return [
        "## Setup",
        "",
        f"- started {meta.get('started')}, mode `{results.mode}`, took {meta.get('seconds')} s",
        f"- machine: {meta.get('cpu')}, {meta.get('cores')} cores, Linux {meta.get('kernel')}, "
        f"Python {meta.get('python')}",
        f"- load average (1/5/15 min) at start {_load(load0)}, at end {_load(load1)}",
        f"- versions: {versions}",
        f"- our server: {results.ours_status}",
        "",
    ]


def _load(values: Any) -> str:
    return "/".join(f"{v:.2f}" for v in values) if values else "?"


def _failures_section(results: Results) -> list[str]:
    if not results.failures:
        return []
    lines = ["## Skipped or failed", ""]
    lines += [f"- `{key}`: {why}" for key, why in sorted(results.failures.items())]
    return [*lines, ""]


def contention(results: Results) -> str:
    """One line on how busy the machine was with other work during the measurements."""
    other = [r["other_cores"] for r in results.throughput if r.get("other_cores") is not None]
    if not other:
        return ""
    median = statistics.median(other)
    load = results.meta.get("loadavg_end") or [0.0]
    word = "heavily contended" if median > 0.5 else "contended" if median > 0.15 else "quiet"
    return (
        f"This run was **{word}**: other processes used a median {median:.2f} of the 2 cores "
        f"during the throughput runs (load average {load[0]:.1f} at the end)."
    )


def markdown(results: Results, chart_name: str) -> str:
    date = str(results.meta.get("started", ""))[:10]
    lines = [
        f"# kamisama-serve vs peers — {date} ({results.mode} mode)",
        "",
        f"> {CAVEAT}",
        "",
        contention(results),
        "",
        f"![throughput and CPU per request]({chart_name})",
        "",
        *_setup_section(results),
        *_targets_section(results),
        *_throughput_section(results),
        *_startup_section(results),
        *_loss_section(results),
        *_balance_section(results),
        *_failures_section(results),
    ]
    return "\n".join(lines).rstrip() + "\n"


def summary(results: Results, md_path: Path, png_path: Path, readme: Path) -> str:
    """The block kept between the markers in benchmarks/README.md."""
    rel_md = (
        md_path.relative_to(readme.parent) if md_path.is_relative_to(readme.parent) else md_path
    )
    rel_png = (
        png_path.relative_to(readme.parent) if png_path.is_relative_to(readme.parent) else png_path
    )
    meta = results.meta
    tp = throughput_table(results.throughput)
    nginx = tp.get(("static", "nginx"), {}).get("rps")
    lines = [
        START,
        f"### Latest run: {str(meta.get('started', ''))[:16]} "
        f"({results.mode} mode, {meta.get('seconds')} s), full report: [{rel_md}]({rel_md})",
        "",
        f"Machine: {meta.get('cpu')}, {meta.get('cores')} cores, Linux {meta.get('kernel')}, "
        f"Python {meta.get('python')}; load average at start {_load(meta.get('loadavg_start'))}. "
        "Other engineers' test runs shared these cores: **only ratios within this run count.** "
        + contention(results),
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()) + ".",
        "",
        f"Our server: {results.ours_status}.",
        "",
        _row(
            "app",
            "best peer",
            "req/s",
            "CPU µs/req",
            "kamisama req/s",
            "x peer",
            "kamisama CPU µs/req",
            "x peer",
            "kamisama of nginx",
            "kamisama worker share",
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    shares = worker_shares(results.throughput)
    for app in APPS:
        best = best_peer(app, tp)
        us_key = next((k for (a, k) in tp if a == app and CONTENDERS[k].ours), None)
        us = tp.get((app, us_key)) if us_key else None
        if best is None:
            continue
        peer = tp[(app, best)]
        us_rps = us["rps"] if us else None
        us_cpu = us["cpu_us_per_req"] if us else None
        failed = [k for k, _ in _failed_cells(results.failures, app) if CONTENDERS[k].ours]
        lines.append(
            _row(
                APPS[app].title,
                label(best),
                fmt(peer["rps"]),
                fmt(peer["cpu_us_per_req"], 1),
                "**failed** (see the report)" if failed else fmt(us_rps),
                fmt_ratio(ratio(us_rps, peer["rps"])),
                fmt(us_cpu, 1),
                fmt_ratio(ratio(us_cpu, peer["cpu_us_per_req"])),
                fmt_ratio(ratio(us_rps, nginx)),
                fmt_shares(shares.get((app, us_key))) if us_key else "—",
            )
        )
    if nginx:
        lines += ["", f"nginx (physical reference, 2 workers): {fmt(nginx)} req/s."]
    lines += ["", "Targets:", "", "| target | measured | verdict |", "|---|---|---|"]
    lines += [_row(t, m, v) for t, m, v in targets(results)]
    lines += _balance_summary(results)
    lines += ["", f"![throughput and CPU per request]({rel_png})", "", END]
    return "\n".join(lines)


def update_readme(readme: Path, results: Results, md_path: Path, png_path: Path) -> None:
    """Replace the block between the markers (append one if the README has none)."""
    block = summary(results, md_path, png_path, readme)
    text = readme.read_text() if readme.exists() else "# Benchmarks\n"
    if START in text and END in text:
        text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n## Latest results\n\n" + block + "\n"
    readme.write_text(text)
