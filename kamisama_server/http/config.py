"""Limits and options of the HTTP/1.1 engine (one instance per worker).

Names and defaults follow issue 3 (gunicorn's names for the request limits).
The CLI/serve layer builds one ``HttpConfig`` from its flags; the engine only
reads it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from .access import DEFAULT_ACCESS_FORMAT
from .parser_choice import resolve as resolve_parser


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """Everything the engine needs to know; immutable once serving starts."""

    # Request limits (gunicorn's names). 0 means unlimited for line/field size.
    limit_request_line: int = 8190  # -> 414
    limit_request_fields: int = 100  # -> 431
    limit_request_field_size: int = 8190  # -> 431
    limit_request_body: int | None = None  # bytes; None = unlimited -> 413
    # Bytes of incomplete request heads one worker holds, all connections together;
    # over it the oldest are dropped (408). 0 = unlimited.
    limit_incomplete_heads: int = 64 * 1024 * 1024

    # Timers, in seconds.
    keep_alive: float = 5.0  # idle keep-alive connection is closed after this
    header_timeout: float = 10.0  # request head must be complete within this -> 408
    stall_timeout: float = 30.0  # no progress reading a body or writing a response: close; 0 = off
    drain_idle_grace: float = 0.1  # on drain, an idle keep-alive conn may still send one request
    drain_fresh_timeout: float = 2.0  # on drain, an accepted conn that sent nothing gets this long

    # Load.
    limit_concurrency: int | None = None  # in-flight requests per worker; over it -> 503
    backlog: int = 2048  # for whoever calls listen(); the engine never does

    # What the app sees.
    root_path: str = ""
    proxy_headers: bool = True  # from forwarded_allow_ips only, as gunicorn and uvicorn
    forwarded_allow_ips: str = "127.0.0.1"  # comma-separated IPs/CIDRs, or "*"
    ssl: ssl.SSLContext | None = None

    # Response decoration and logging.
    server_header: bool = True
    server_name: str = "kamisama"
    date_header: bool = True
    access_log: bool = False
    access_log_format: str = DEFAULT_ACCESS_FORMAT  # gunicorn's atoms, see access.py

    # Request parser: "httptools", "h11" (the fallback), or "auto" (see parser_choice).
    parser: str = "auto"

    # WebSockets: the largest message, its fragments together (uvicorn's default).
    ws_max_size: int = 16 * 1024 * 1024

    # Flow control: request body buffered per exchange before we stop reading.
    body_high_water: int = 256 * 1024
    # Pipelined requests parsed ahead of the one being answered before we stop reading.
    pipeline_depth: int = 16

    def __post_init__(self) -> None:
        for name in (
            "limit_request_line",
            "limit_request_fields",
            "limit_request_field_size",
            "limit_incomplete_heads",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.limit_request_body is not None and self.limit_request_body < 0:
            raise ValueError("limit_request_body must be >= 0 or None")
        if self.limit_concurrency is not None and self.limit_concurrency < 1:
            raise ValueError("limit_concurrency must be >= 1 or None")
        if self.keep_alive < 0 or self.header_timeout <= 0 or self.stall_timeout < 0:
            raise ValueError("keep_alive, stall_timeout must be >= 0 and header_timeout > 0")
        resolve_parser(self.parser)  # ValueError if unknown or not installed

    @property
    def max_head_bytes(self) -> int:
        """Bytes a request head may take before we answer 431 without parsing further.

        httptools buffers a header until it is complete, so this bounds the memory
        a client can make us hold with an endless header.
        """
        line = self.limit_request_line or 65536
        field = self.limit_request_field_size or 65536
        fields = self.limit_request_fields or 32768
        return line + 4 + fields * (field + 4) + 4
