"""Medians over rounds, and the reference peer each figure is compared with."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from .contenders import CONTENDERS, THROUGHPUT_REFERENCE

Row = dict[str, Any]


def label(key: str) -> str:
    if key == "nginx":
        return "nginx (static return)"
    return CONTENDERS[key].label if key in CONTENDERS else key


def medians(
    rows: list[Row], keys: tuple[str, ...], fields: tuple[str, ...]
) -> dict[tuple[Any, ...], Row]:
    """Group rows by `keys`; each field becomes its median (None values skipped), plus 'n'
    (rounds), and min/max of the first field."""
    groups: dict[tuple[Any, ...], list[Row]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in keys)].append(row)
    out: dict[tuple[Any, ...], Row] = {}
    for group_key, group in groups.items():
        merged: Row = dict(zip(keys, group_key, strict=True))
        for name in fields:
            values = [r[name] for r in group if r.get(name) is not None]
            merged[name] = statistics.median(values) if values else None
        first = [r[fields[0]] for r in group if r.get(fields[0]) is not None]
        merged["min"], merged["max"] = (min(first), max(first)) if first else (None, None)
        merged["n"] = len(group)
        out[group_key] = merged
    return out


THROUGHPUT_FIELDS = (
    "rps",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "cpu_us_per_req",
    "other_cores",
    "socket_errors",
    "non_2xx",
    "requests",
)


def throughput_table(rows: list[Row]) -> dict[tuple[Any, ...], Row]:
    return medians(rows, ("app", "contender"), THROUGHPUT_FIELDS)


def answered_well(row: Row) -> bool:
    """At most 1% of the requests failed: error pages are fast, so they must not win."""
    errors = (row.get("socket_errors") or 0) + (row.get("non_2xx") or 0)
    return errors <= 0.01 * max(1, row.get("requests") or 0)


def best_peer(app: str, table: dict[tuple[Any, ...], Row]) -> str | None:
    """The fastest peer (not ours) that answered this app without errors in this run."""
    peers: list[tuple[float, str]] = [
        (row["rps"], key)
        for (a, key), row in table.items()
        if a == app
        and key in CONTENDERS
        and not CONTENDERS[key].ours
        and row["rps"]
        and answered_well(row)
    ]
    return max(peers)[1] if peers else None


def reference(app: str, table: dict[tuple[Any, ...], Row]) -> str | None:
    """The peer an app's ratios are taken against: a fixed one, or the fastest peer."""
    wanted = THROUGHPUT_REFERENCE.get(app)
    if wanted and wanted != "best" and (app, wanted) in table:
        return wanted
    return best_peer(app, table)


def ratio(value: float | None, ref: float | None) -> float | None:
    if value is None or not ref:
        return None
    return value / ref


def fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _elementwise_medians(rows: list[Row], name: str) -> dict[tuple[str, str], list[float]]:
    """Per (app, contender): the element-wise median over rounds of a list-valued field."""
    groups: dict[tuple[str, str], list[list[int]]] = defaultdict(list)
    for row in rows:
        if row.get(name):
            groups[(row["app"], row["contender"])].append(row[name])
    out = {}
    for key, lists in groups.items():
        width = min(len(v) for v in lists)
        out[key] = [statistics.median(v[i] for v in lists) for i in range(width)]
    return out


def worker_shares(rows: list[Row]) -> dict[tuple[str, str], list[float]]:
    """Per (app, contender): each worker's share of the workers' CPU in %, busiest first,
    element-wise medians over rounds ([52, 48])."""
    return _elementwise_medians(rows, "worker_share_pct")


def below_half_fair(shares: list[float]) -> bool:
    """A worker got less than half of its fair share (100% / workers) of the work."""
    return bool(shares) and min(shares) < 0.5 * 100 / len(shares)


def fmt_shares(shares: list[float] | None) -> str:
    """As "52/48%", flagged when a worker got less than half its fair share."""
    if not shares:
        return "—"
    text = "/".join(f"{v:.0f}" for v in shares) + "%"
    return f"**{text} ⚠ < ½ fair**" if below_half_fair(shares) else text
