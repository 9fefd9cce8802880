"""Shared fixtures. ``script`` starts a real master process from a source string."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from processes import Script

import kamisama_server
from kamisama_server.http.ratelimit import RepeatFilter
from kamisama_server.version import VERSION, engine_build


def pytest_report_header() -> str:
    where = kamisama_server.__path__[0]
    return f"kamisama-server {VERSION}, engine: {engine_build()}, from {where}"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test a checkout that holds compiled modules beside its sources.

    A compiled build made in the checkout without HATCH_BUILD_CLEAN_HOOKS_AFTER
    leaves its .so files there, and Python imports them before the .py files:
    an editable install would test (and serve) stale compiled code.
    """
    package = Path(kamisama_server.__path__[0])
    if (package.parent / "pyproject.toml").exists():  # imported from a checkout
        stale = sorted(str(p.relative_to(package.parent)) for p in package.rglob("*.so"))
        if stale:
            pytest.exit(f"compiled modules in the checkout shadow the sources: {stale}", 2)


@pytest.fixture(autouse=True)
def fresh_log_repeats() -> None:
    """Each test sees its first log line of a cause: the rate limit's memory is per process."""
    for logger in list(logging.Logger.manager.loggerDict.values()):
        for each in getattr(logger, "filters", ()):
            if isinstance(each, RepeatFilter):
                each.forget()


@pytest.fixture
def script(tmp_path: Path) -> Iterator[Callable[..., Script]]:
    """``script(source, env=None)``: run ``source`` as a master in its own process group."""
    started: list[Script] = []

    def start(source: str, env: dict[str, str] | None = None) -> Script:
        directory = tmp_path / f"script{len(started)}"
        directory.mkdir()
        started.append(Script(directory, source, env))
        return started[-1]

    yield start
    for each in started:
        each.cleanup()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` first: xdist hands tests out in order, so the long ones overlap."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
