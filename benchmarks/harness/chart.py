"""One PNG a reader takes in at a glance: req/s (left) and server CPU per request (right),
one bar per app x server, ours highlighted, nginx as a line; whiskers = min..max over rounds."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .contenders import APPS, CONTENDERS
from .stats import label, throughput_table
from .suites import Results

OURS, PEER = "#d95f02", "#4c78a8"


def draw(results: Results, path: Path) -> None:
    table = throughput_table(results.throughput)
    rows = []
    for app in APPS:
        cells = sorted(
            ((key, row) for (a, key), row in table.items() if a == app and row["rps"]),
            key=lambda kr: -kr[1]["rps"],
        )
        rows += [(f"{APPS[app].title}: {label(key)}", key, row) for key, row in cells]
    nginx = table.get(("static", "nginx"), {}).get("rps")
    height = max(3.0, 0.32 * len(rows) + 1.5)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, height), sharey=True)
    if not rows:
        left.text(0.5, 0.5, "no throughput results", ha="center")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return
    y = list(range(len(rows)))
    colors = [OURS if CONTENDERS[k].ours else PEER for _, k, _ in rows]
    rps = [r["rps"] for _, _, r in rows]
    err = [[r["rps"] - r["min"] for _, _, r in rows], [r["max"] - r["rps"] for _, _, r in rows]]
    left.barh(y, rps, color=colors, xerr=err, error_kw={"elinewidth": 0.8, "capsize": 2})
    left.set_yticks(y, [name for name, _, _ in rows], fontsize=8)
    left.invert_yaxis()  # apps top to bottom in table order, fastest first within each
    for i, (_, _, row) in enumerate(rows):
        left.text(row["max"], i, f"  {row['rps'] / 1000:.1f}k", va="center", fontsize=7)
    left.set_xlabel("requests / second (higher is better)")
    left.xaxis.set_major_formatter(lambda x, _pos: f"{x / 1000:.0f}k")
    if nginx:
        left.axvline(nginx, color="grey", linestyle="--", linewidth=1)
        left.text(
            nginx,
            len(rows) - 0.5,
            f" nginx {nginx:,.0f}",
            color="grey",
            fontsize=8,
            va="bottom",
            ha="right",
        )
    cpu = [r["cpu_us_per_req"] or 0 for _, _, r in rows]
    right.barh(y, cpu, color=colors)
    right.set_xlabel("server CPU µs per request (lower is better)")
    for i, value in enumerate(cpu):
        right.text(value, i, f" {value:.0f}", va="center", fontsize=7)
    for ax in (left, right):
        ax.grid(axis="x", alpha=0.3)
        # Separate apps with a thin line.
        prev = None
        for i, (name, _, _) in enumerate(rows):
            app_title = name.split(":")[0]
            if prev is not None and app_title != prev:
                ax.axhline(i - 0.5, color="black", linewidth=0.4)
            prev = app_title
    date = str(results.meta.get("started", ""))[:16]
    fig.suptitle(
        f"kamisama-serve (orange) vs peers — {date}, {results.mode} mode, 2 workers each; "
        "only ratios within one run count",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
