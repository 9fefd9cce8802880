"""A plain WSGI view running a coroutine with ``asyncio.run`` (fine in a thread with no loop)."""

import asyncio


async def double(value: int) -> int:
    await asyncio.sleep(0)
    return 2 * value


def app(environ, start_response):  # type: ignore[no-untyped-def]
    body = f"asyncio.run gave {asyncio.run(double(21))}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
