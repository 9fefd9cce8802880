"""Which request parser the engine runs on: httptools (llhttp), or h11 where it is missing.

``protocol.py`` imports this module under the name ``httptools``: it has the
names the engine uses from httptools. The exceptions and ``parse_url`` are
httptools' own when it is importable, so one set of ``except`` clauses catches
what either parser raises; ``HttpRequestParser(protocol)`` builds the parser
that ``protocol.config.parser`` names:

- ``"httptools"``: llhttp through httptools (fast; the default when installed);
- ``"h11"``: :class:`~kamisama_server.http.h11_parser.H11RequestParser`;
- ``"auto"``: the ``KAMISAMA_HTTP_PARSER`` environment variable if set (how a
  whole test run or server is switched), else httptools if importable, else h11.
"""

from __future__ import annotations

import os
from typing import Any

from .h11_parser import (
    H11RequestParser,
    HttpParserCallbackError,
    HttpParserError,
    HttpParserInvalidMethodError,
    HttpParserInvalidURLError,
    HttpParserUpgrade,
)
from .h11_parser import parse_url as _h11_parse_url

_httptools: Any
try:
    import httptools as _httptools
except ImportError:  # pragma: no cover - exercised where httptools is not installed
    _httptools = None

__all__ = [
    "PARSERS",
    "HttpParserCallbackError",
    "HttpParserError",
    "HttpParserInvalidMethodError",
    "HttpParserInvalidURLError",
    "HttpParserUpgrade",
    "HttpRequestParser",
    "parse_url",
    "resolve",
]

PARSERS = ("auto", "httptools", "h11")
ENV_VAR = "KAMISAMA_HTTP_PARSER"

parse_url: Any = _httptools.parse_url if _httptools is not None else _h11_parse_url


def resolve(name: str) -> str:
    """The parser ``name`` stands for: "httptools" or "h11"; ValueError if unusable."""
    if name == "auto":
        name = os.environ.get(ENV_VAR) or ("httptools" if _httptools is not None else "h11")
    if name not in PARSERS[1:]:
        raise ValueError(f"unknown HTTP parser {name!r} (expected one of {', '.join(PARSERS)})")
    if name == "httptools" and _httptools is None:
        raise ValueError("the httptools parser is not installed")
    return name


def HttpRequestParser(protocol: Any) -> Any:
    """A parser for ``protocol``'s connection, of the kind its config asks for."""
    config = protocol.config
    if resolve(getattr(config, "parser", "auto")) == "h11":
        return H11RequestParser(protocol, config.max_head_bytes)
    assert _httptools is not None
    return _httptools.HttpRequestParser(protocol)
