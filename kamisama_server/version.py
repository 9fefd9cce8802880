"""The installed version, read once from the package metadata (pyproject.toml is its source)."""

from __future__ import annotations

from importlib import metadata

try:
    VERSION = metadata.version("kamisama-server")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    VERSION = "0+unknown"

# What WSGI apps see as SERVER_SOFTWARE and `--version` prints.
SERVER_SOFTWARE = f"kamisama-server/{VERSION}"
