"""The markdown report of one run, and the summary block it keeps in benchmarks/README.md."""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

from .contenders import APPS, CONTENDERS, STARTUP_REFERENCES
from .stats import Row, fmt, fmt_ratio, label, medians, ratio, reference, splits, throughput_table
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
    split = splits(results.throughput)
    lines = [
        "## Hello-world throughput, latency and server CPU per request",
        "",
        f"{meta.get('workers', 2)} workers per server; `wrk -t{meta.get('wrk_threads')} "
        f"-c{meta.get('connections')} -d{meta.get('duration_s')}s`, "
        f"{meta.get('rounds')} interleaved rounds, medians. CPU/req = the server's whole "
        "process tree's user+system CPU over the requests wrk completed. *busiest procs* = "
        "the CPU of the tree's busiest processes (one per worker) in % of a core: how "
        "evenly the workers share the load.",
        "",
    ]
    if nginx:
        lines += [
            f"nginx reference (`return 200` from its config, 2 workers): **{fmt(nginx)} req/s**, "
            f"{fmt(table[('static', 'nginx')]['cpu_us_per_req'], 1)} µs CPU/req.",
            "",
        ]
    for app in APPS:
        rows = [(key, row) for (a, key), row in table.items() if a == app]
        if not rows:
            continue
        ref = reference(app, table)
        ref_row = table.get((app, ref)) if ref else None
        lines += [
            f"### {APPS[app].title} (`{APPS[app].target}`): ratios against "
            f"**{label(ref) if ref else 'n/a'}**",
            "",
            _row(
                "server",
                "req/s",
                "x ref",
                "of nginx",
                "p50 ms",
                "p99 ms",
                "CPU µs/req",
                "x ref",
                "busiest procs % CPU",
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
                    fmt(row["rps"]),
                    fmt_ratio(ratio(row["rps"], ref_rps)),
                    fmt_ratio(ratio(row["rps"], nginx)),
                    fmt(row["p50_ms"], 2),
                    fmt(row["p99_ms"], 2),
                    fmt(row["cpu_us_per_req"], 1),
                    fmt_ratio(ratio(row["cpu_us_per_req"], ref_cpu)),
                    split.get((app, key), "—"),
                    fmt(row["other_cores"], 2),
                    str(errors),
                )
            )
        lines.append("")
    return lines


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


def _pair(row: Row | None) -> str:
    return "—" if row is None else f"{fmt(row['lost'])} / {fmt(row['sent'])}"


def _done(values: list[bool] | None) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return "yes" if values[0] else "**no** (old workers still answering at the deadline)"
    return f"{sum(values)} of {len(values)} rounds"


def targets(results: Results) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for each target of issue 4."""
    if not any(
        CONTENDERS[r["contender"]].ours for r in results.throughput if r["contender"] in CONTENDERS
    ):
        why = results.ours_status
        return [("all targets", "not measured", f"our server was not benchmarked: {why}")]
    tp = throughput_table(results.throughput)
    st = medians(results.startup, ("app", "contender"), ("ready_s", "uss_mb"))
    ls = medians(results.loss, ("contender", "scenario"), ("lost",))
    out: list[tuple[str, str, str]] = []

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "**not met**")

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
                verdict(None if r is None else r >= factor),
            )
        )

    rps_target("hello-wsgi", "us-wsgi", "granian-wsgi", 1.2, "WSGI hello req/s")
    cpu = tp.get(("hello-wsgi", "us-wsgi"), {}).get("cpu_us_per_req")
    out.append(
        (
            "WSGI hello: ≤ 25 µs server CPU/req",
            f"{fmt(cpu, 1)} µs",
            verdict(None if cpu is None else cpu <= 25),
        )
    )
    rps_target("hello-asgi", "us-asgi", "uvicorn", 1.1, "ASGI hello req/s")
    rps_target("flask", "us-wsgi", reference("flask", tp), 1.1, "Flask req/s")
    rps_target("fastapi", "us-asgi", reference("fastapi", tp), 1.1, "FastAPI req/s")

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
                verdict(None if r is None else r <= 1.0),
            )
        )
    r = startup_ratio("fastapi", "us-asgi", "uvicorn", "ready_s")
    out.append(
        (
            "FastAPI: 4 workers ready ≤ ½ uvicorn's",
            fmt_ratio(r),
            verdict(None if r is None else r <= 0.5),
        )
    )
    r = startup_ratio("fastapi", "us-asgi-preload", "uvicorn", "uss_mb")
    out.append(
        (
            "FastAPI --preload: summed USS ≤ ⅓ uvicorn's",
            fmt_ratio(r),
            verdict(None if r is None else r <= 1 / 3),
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
            out.append((f"{label(key)}: 0 lost on {what}", measured, verdict(ok)))
    return out


def _targets_section(results: Results) -> list[str]:
    lines = ["## Targets of issue 4", "", "| target | measured | verdict |", "|---|---|---|"]
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
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for app in APPS:
        best = reference_best(app, tp)
        us = next((r for (a, k), r in tp.items() if a == app and CONTENDERS[k].ours), None)
        if best is None:
            continue
        peer = tp[(app, best)]
        us_rps = us["rps"] if us else None
        us_cpu = us["cpu_us_per_req"] if us else None
        lines.append(
            _row(
                APPS[app].title,
                label(best),
                fmt(peer["rps"]),
                fmt(peer["cpu_us_per_req"], 1),
                fmt(us_rps),
                fmt_ratio(ratio(us_rps, peer["rps"])),
                fmt(us_cpu, 1),
                fmt_ratio(ratio(us_cpu, peer["cpu_us_per_req"])),
                fmt_ratio(ratio(us_rps, nginx)),
            )
        )
    if nginx:
        lines += ["", f"nginx (physical reference, 2 workers): {fmt(nginx)} req/s."]
    lines += ["", "Targets:", "", "| target | measured | verdict |", "|---|---|---|"]
    lines += [_row(t, m, v) for t, m, v in targets(results)]
    lines += ["", f"![throughput and CPU per request]({rel_png})", "", END]
    return "\n".join(lines)


def reference_best(app: str, tp: dict[tuple[Any, ...], Row]) -> str | None:
    peers = [
        (r["rps"], k)
        for (a, k), r in tp.items()
        if a == app and not CONTENDERS[k].ours and r["rps"]
    ]
    return max(peers)[1] if peers else None


def update_readme(readme: Path, results: Results, md_path: Path, png_path: Path) -> None:
    """Replace the block between the markers (append one if the README has none)."""
    block = summary(results, md_path, png_path, readme)
    text = readme.read_text() if readme.exists() else "# Benchmarks\n"
    if START in text and END in text:
        text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n## Latest results\n\n" + block + "\n"
    readme.write_text(text)
