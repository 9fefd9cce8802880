"""gunicorn's raw-request corpus sent to the real ``kamisama-serve``, WSGI and ASGI.

The same files and decoding as tests/test_http_corpus.py (which runs them
against the engine in-process; its helpers are imported, not rewritten): invalid
requests get a 4xx/5xx or a close, valid ones are served, and after each one
the server still answers a good request and no worker died.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serve_support import Server
from test_http_corpus import CORPUS, FILES, assert_corpus_verdict

APPS = {
    "wsgi": """
def app(environ, start_response):
    body = environ["wsgi.input"].read()
    out = b"ok %d" % len(body)
    start_response("200 OK", [("Content-Length", str(len(out)))])
    return [out]
""",
    "asgi": """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    out = b"ok %d" % size
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(out)).encode())]})
    await send({"type": "http.response.body", "body": out})
""",
}


@pytest.fixture(scope="module", params=sorted(APPS))
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    if not FILES:
        pytest.skip(f"corpus not found at {CORPUS}")
    interface: str = request.param
    directory = tmp_path_factory.mktemp(f"corpus-{interface}")
    args = ["app:app", "--bind", "127.0.0.1:0", "-w", "2", "--timeout", "5", "--no-access-log"]
    started = Server(directory, args, modules={"app": APPS[interface]})
    try:
        started.wait_listening()
        yield started
    finally:
        started.cleanup()


@pytest.mark.parametrize("name", sorted(FILES) or ["<no corpus>"])
def test_corpus_request_through_the_server(server: Server, name: str) -> None:
    assert_corpus_verdict(name, server.port)
    assert server.process.poll() is None
    assert "respawning" not in server.err, server.err
