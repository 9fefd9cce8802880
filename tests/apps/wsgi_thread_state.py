"""A WSGI app whose response iterable relies on the state of the thread that called the app.

The call sets a thread-local and a ``ContextVar`` to the request's id (``?id=``);
the body is one line for the call and one per ``next()``, each saying which
thread ran it, what it sees of both values and whether an event loop runs
there. ``close()`` writes the same line to ``close-ID.txt`` (the body is gone
by then). PEP 3333 servers iterate in the calling thread, and frameworks
(Flask's contexts, Django's connections, OpenTelemetry spans) count on it.
"""

import asyncio
import threading
from contextvars import ContextVar
from pathlib import Path

local = threading.local()
request_id: ContextVar[str] = ContextVar("request_id", default="unset")


def state(stage: str) -> str:
    try:
        asyncio.get_running_loop()
        loop = "loop-running"
    except RuntimeError:
        loop = "no-loop"
    seen = getattr(local, "request_id", "unset")
    return f"{stage} thread={threading.get_ident()} local={seen} var={request_id.get()} {loop}\n"


class Body:
    """The call's line, then ``parts`` lines made in ``next()``; ``close()`` reports to a file."""

    def __init__(self, rid: str, parts: int = 3) -> None:
        self.rid = rid
        self.lines = [state("call")]
        self.parts = parts

    def __iter__(self) -> "Body":
        return self

    def __next__(self) -> bytes:
        if self.lines:
            return self.lines.pop().encode()
        if self.parts == 0:
            raise StopIteration
        self.parts -= 1
        return state("next").encode()

    def close(self) -> None:
        Path(f"close-{self.rid}.txt").write_text(state("close"))


def app(environ, start_response):  # type: ignore[no-untyped-def]
    rid = environ["QUERY_STRING"].removeprefix("id=")
    local.request_id = rid
    request_id.set(rid)
    start_response("200 OK", [("Content-Type", "text/plain")])  # no length: it streams
    return Body(rid)
