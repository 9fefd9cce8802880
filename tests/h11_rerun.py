"""Run another test module's tests again with the engine on the h11 fallback parser.

A ``tests/test_h11_*.py`` module star-imports a suite (pytest collects the
imported tests and fixtures as its own) and these two autouse fixtures:
``KAMISAMA_HTTP_PARSER=h11`` for the module, so every ``HttpConfig(parser="auto")``
the suite builds picks h11; and a strict xfail on each test the module's
``H11_DIFFERENCES`` names, with the reason the verdicts differ.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kamisama_server.http.parser_choice import ENV_VAR, resolve


@pytest.fixture(scope="module", autouse=True)
def h11_parser() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENV_VAR, "h11")
        assert resolve("auto") == "h11"
        yield


@pytest.fixture(autouse=True)
def h11_known_difference(request: pytest.FixtureRequest) -> None:
    differences: dict[str, str] = getattr(request.module, "H11_DIFFERENCES", {})
    reason = differences.get(request.node.name)
    if reason is not None:
        request.node.add_marker(pytest.mark.xfail(reason=f"h11: {reason}", strict=True))
