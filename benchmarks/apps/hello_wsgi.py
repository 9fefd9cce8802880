"""Raw WSGI hello world: the floor of what a WSGI server costs per request.

Routes (any method):
  /      -> "Hello, world!"
  /pid   -> the worker's pid (the harness counts distinct pids to see how many workers are ready)
  /slow  -> the worker's pid after 50 ms of blocking sleep (graceful-shutdown and restart tests:
            the pid shows when old workers have been replaced)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

BODY = b"Hello, world!"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def _text(start_response: Callable[..., Any], body: bytes) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answer one request; no framework, nothing beyond the essentials on the hello path."""
    path = environ.get("PATH_INFO", "/")
    if path == "/pid":
        return _text(start_response, str(os.getpid()).encode())
    if path == "/slow":
        time.sleep(0.05)
        return _text(start_response, str(os.getpid()).encode())
    start_response("200 OK", HEADERS)
    return [BODY]
