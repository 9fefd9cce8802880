"""``--proxy-headers``: the client address and scheme a trusted proxy reports.

Both interfaces see the same answer; an untrusted peer's headers are ignored.
"""

from __future__ import annotations

import httpx
import pytest

from kamisama_server.http.asgi import AsgiAdapter
from kamisama_server.http.background import BackgroundServer
from kamisama_server.http.config import HttpConfig
from kamisama_server.http.wsgi import WSGIAdapter

FORWARDED = {"X-Forwarded-For": "203.0.113.7, 127.0.0.1", "X-Forwarded-Proto": "https"}


def wsgi_app(environ, start_response):
    body = f"{environ['REMOTE_ADDR']} {environ['wsgi.url_scheme']}".encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


async def asgi_app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = f"{scope['client'][0]} {scope['scheme']}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def handler(kind: str, config: HttpConfig):
    return WSGIAdapter(wsgi_app) if kind == "wsgi" else AsgiAdapter(asgi_app, config)


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
@pytest.mark.parametrize(
    ("enabled", "allow", "expected"),
    [
        (True, "127.0.0.1", "203.0.113.7 https"),
        (True, "10.0.0.0/8", "127.0.0.1 http"),  # the peer is not a trusted proxy
        (True, "*", "203.0.113.7 https"),
        (False, "*", "127.0.0.1 http"),  # off: headers are the client's words only
    ],
)
def test_a_trusted_proxy_sets_client_and_scheme(kind, enabled, allow, expected):
    config = HttpConfig(proxy_headers=enabled, forwarded_allow_ips=allow)
    with BackgroundServer(handler(kind, config), config) as server:
        answer = httpx.get(server.url + "/", headers=FORWARDED, timeout=5)
    assert answer.text == expected
