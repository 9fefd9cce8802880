"""What ran where: server versions, tools, CPU, kernel, load. A result without these can't be
compared to anything."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from typing import Any

from .contenders import ours_command
from .nginx import nginx_binary

PACKAGES = (
    "kamisama-server",
    "gunicorn",
    "uvicorn",
    "uvicorn-worker",
    "granian",
    "hypercorn",
    "flask",
    "django",
    "fastapi",
    "bjoern-binary",
    "uvloop",
    "httptools",
    "psutil",
)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe() -> dict[str, Any]:
    versions = {p: _version(p) for p in PACKAGES}
    # Which build of our engine ran ("0.1.0 (engine: compiled)"): the one the runs used.
    ours = _first_line([ours_command(), "--version"])
    versions["kamisama-server"] = ours.removeprefix("kamisama-serve ")
    nginx = nginx_binary()
    versions["nginx"] = _first_line([nginx, "-v"]).rpartition("/")[2] if nginx else "not installed"
    versions["wrk"] = _first_line(["wrk", "-v"]).split("Copyright")[0].replace("wrk ", "").strip()
    return {
        "versions": versions,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "loadavg_start": os.getloadavg(),
    }
