"""The parsed request head, and what both adapters look for in its path.

Every request reads its fields about ten times (the environ or the scope, the
exchange, the access log). As a plain class with slots, compiled, each read is
a struct access (as a dataclass each was a generic attribute lookup through
the type). Import these names from here.
"""

from __future__ import annotations

from typing import Final

Headers = list[tuple[bytes, bytes]]

PERCENT: Final = 0x25  # ord("%")
"""What a percent-encoded ``raw_path`` holds, looked for as an int by both adapters:
``b"%" in path`` makes ``bytes.__contains__`` try the argument as an int first and
raise and clear a TypeError (on CPython 3.11 that was ~2k instructions, 4% of a
WSGI hello request; the int test is one scan)."""


class RequestHead:
    """What the engine parsed and validated of the request; read-only for adapters."""

    __slots__ = (
        "client",
        "headers",
        "http_version",
        "method",
        "query_string",
        "raw_path",
        "root_path",
        "scheme",
        "server",
    )

    def __init__(
        self,
        method: str,
        raw_path: bytes,
        query_string: bytes,
        http_version: str,
        headers: Headers,
        scheme: str = "http",
        client: tuple[str, int] | None = None,
        server: tuple[str, int] | None = None,
        root_path: str = "",
    ) -> None:
        self.method = method
        self.raw_path = raw_path  # as sent, still percent-encoded, without the query
        self.query_string = query_string
        self.http_version = http_version  # "1.0" or "1.1"
        self.headers = headers  # names lower-cased, values as sent (stripped of OWS)
        self.scheme = scheme
        self.client = client
        self.server = server
        self.root_path = root_path

    def __repr__(self) -> str:
        return (
            f"RequestHead({self.method} {self.raw_path!r} HTTP/{self.http_version}, "
            f"{len(self.headers)} fields, {self.scheme}, client={self.client})"
        )
