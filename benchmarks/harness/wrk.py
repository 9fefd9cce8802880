"""Run wrk against 127.0.0.1 and parse what it prints, plus the machine's CPU accounting
around the run (so a reader can see how much of the 2 cores something else was using)."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import time
from dataclasses import dataclass

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
_CLK = os.sysconf("SC_CLK_TCK")


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float  # the slowest request: with p99, tells a steady tail from a few stalls
    socket_errors: int
    non_2xx: int
    wrk_cpu_s: float


def _latency_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"unparsable latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse(output: str) -> tuple[int, float, float, float, float, float, int, int]:
    """From `wrk --latency`: (requests, seconds, rps, p50 ms, p99 ms, max ms, socket
    errors, non-2xx)."""
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    # "    Latency   1.23ms  456.00us  12.34ms   89.01%": average, stdev, max, within one stdev.
    slowest = re.search(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", output, re.M)
    if not (done and rps and p50 and p99 and slowest):
        raise ValueError("wrk output not understood:\n" + output[-800:])
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    seconds = _latency_ms(done.group(2) + done.group(3)) / 1e3
    return (
        int(done.group(1)),
        seconds,
        float(rps.group(1)),
        _latency_ms(p50.group(1)),
        _latency_ms(p99.group(1)),
        _latency_ms(slowest.group(1)),
        sum(int(g) for g in errors.groups()) if errors else 0,
        int(non_2xx.group(1)) if non_2xx else 0,
    )


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    # guest/guest_nice are already counted in user/nice.
    return (sum(fields[:8]) - idle) / _CLK


def run(port: int, path: str, seconds: int, threads: int, connections: int) -> WrkResult:
    """One wrk run; wrk's own CPU comes from the children's rusage around it."""
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "--timeout",
        "5s",
        f"http://127.0.0.1:{port}{path}",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    requests, secs, rps, p50, p99, slowest, errors, non_2xx = parse(done.stdout)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return WrkResult(requests, secs, rps, p50, p99, slowest, errors, non_2xx, cpu)


def self_cpu_seconds() -> float:
    """This harness process's own CPU (threads included)."""
    return time.process_time()
