"""Records whether an asyncio loop was running when the server imported this module,
called the factory and ran the ``--run`` hook; ``/`` reports what it saw.

Sync code there (opening a database, ``asyncio.run`` in a library's setup,
Django's ORM) fails when a loop is running in the thread.
"""

import asyncio

seen: dict[str, str] = {}


def running() -> str:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return "none"
    return "running"


seen["import"] = running()


def on_run(worker_id: int) -> None:
    seen["run"] = running()


def app(environ, start_response):  # type: ignore[no-untyped-def]
    body = " ".join(f"{stage}={loop}" for stage, loop in sorted(seen.items())).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def create_app():  # type: ignore[no-untyped-def]
    seen["factory"] = running()
    return app
