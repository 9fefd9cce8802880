"""The installed version, read once from the package metadata (pyproject.toml is its source)."""

from __future__ import annotations

from importlib import metadata, util

try:
    VERSION = metadata.version("kamisama-server")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    VERSION = "0+unknown"

# What WSGI apps see as SERVER_SOFTWARE and `--version` prints.
SERVER_SOFTWARE = f"kamisama-server/{VERSION}"


def engine_build() -> str:
    """Which build of the engine is installed, for ``--version``: "compiled" when
    its hot path was built with mypyc (README, "Speed"), else "Python". Looked up
    without importing the engine, and only when asked (not at every import)."""
    spec = util.find_spec("kamisama_server.http.protocol")
    origin = spec.origin if spec is not None else None
    return "Python" if origin is None or origin.endswith(".py") else "compiled"
