"""A minimal HTTP/1.1 client on asyncio streams: enough to tell a complete response from a
reset or truncated one, which is all the readiness probes and the loss test need."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

HEAD_LIMIT = 64 * 1024


class Truncated(Exception):
    """The connection ended inside a response (after some bytes of it had arrived)."""


class NoResponse(Exception):
    """The connection ended before any byte of a response arrived."""


@dataclass
class Response:
    status: int
    body: bytes
    close: bool


def request_bytes(path: str, port: int, keep_alive: bool = True) -> bytes:
    connection = "" if keep_alive else "Connection: close\r\n"
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{connection}\r\n".encode()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    for _ in range(1_000_000):
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            # Trailers (if any) end with an empty line.
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
    raise Truncated("too many chunks")


async def read_response(reader: asyncio.StreamReader) -> Response:
    """Read one complete response; raise NoResponse / Truncated when the peer ends early."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise (Truncated if exc.partial else NoResponse)("connection ended in the head") from exc
    except asyncio.LimitOverrunError as exc:
        raise Truncated("response head too large") from exc
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    status = int(rest.split(" ", 1)[0])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
    conn = headers.get("connection", "")
    close = "close" in conn or (version == "HTTP/1.0" and "keep-alive" not in conn)
    try:
        if "chunked" in headers.get("transfer-encoding", ""):
            body = await _read_chunked(reader)
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
        else:
            body = await reader.read()
            close = True
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        raise Truncated("connection ended in the body") from exc
    return Response(status, body, close)


async def get(port: int, path: str, timeout: float) -> Response:
    """One request on a fresh connection (closed afterwards)."""

    async def _go() -> Response:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=HEAD_LIMIT)
        try:
            writer.write(request_bytes(path, port, keep_alive=False))
            await writer.drain()
            return await read_response(reader)
        finally:
            writer.close()

    return await asyncio.wait_for(_go(), timeout)
