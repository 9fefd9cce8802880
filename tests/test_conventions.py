"""Issue 11's conventions, through the real ``kamisama-serve``: what users of gunicorn
and uvicorn expect from the command line and on the wire.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_support import Reader, request
from serve_support import SERVE, Server, StartServer, serving

from kamisama_server.http import protocol as engine_protocol
from kamisama_server.version import SERVER_SOFTWARE, VERSION


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServer]:
    yield from serving(tmp_path)


CONVENTIONS_APP = """
    import json

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/status":
            start_response(environ["QUERY_STRING"].replace("+", " ").replace("%20", " "),
                           [("Content-Length", "0")])
            return [b""]
        if path == "/bad-status":
            start_response("299 Bad\\x01Thing", [("Content-Length", "0")])
            return [b""]
        if path == "/spaces":
            start_response("200 OK", [("Set-Cookie", "  csrftoken=abc  "),
                                      ("X-Tab", "\\tv\\t"), ("Content-Length", "0")])
            return [b""]
        keys = ("SERVER_SOFTWARE", "HTTP_ACCEPT", "HTTP_COOKIE", "wsgi.url_scheme",
                "REMOTE_ADDR")
        body = json.dumps({k: environ.get(k) for k in keys}).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]
"""

ARGS = ["app:app", "--bind", "127.0.0.1:0", "-w", "1", "--timeout", "5"]


def start(serve: StartServer, *extra: str) -> Server:
    server = serve([*ARGS, *extra], modules={"app": CONVENTIONS_APP})
    server.wait_listening()
    return server


def get(server: Server, target: str, headers: str = "") -> tuple[bytes, bytes]:
    """(status line, raw head) of one GET on a fresh connection."""
    raw = f"GET {target} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n"
    response, _ = request(server.port, raw.encode())
    head = response.raw_head
    return head.split(b"\r\n", 1)[0], head


@pytest.mark.parametrize(
    "command", [[SERVE], [sys.executable, "-m", "kamisama_server"]], ids=["script", "module"]
)
def test_version_flag(command: list[str], tmp_path: Path) -> None:
    # From elsewhere than the checkout: `-m` looks in the working directory first, and
    # this test must see the installed package (the compiled build, in CI's second run).
    out = subprocess.run(
        [*command, "--version"], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    # The engine's build: this test runs against whichever is installed (CI runs both).
    build = "Python" if engine_protocol.__file__.endswith(".py") else "compiled"
    assert out.stdout.strip() == f"kamisama-serve {VERSION} (engine: {build})"


def test_a_prefix_of_a_flag_is_refused(serve: StartServer) -> None:
    """uvicorn's `--header X:Y` is a usage error, not `--header-timeout X:Y`."""
    server = serve(["app:app", "--header", "X:Y"], modules={"app": CONVENTIONS_APP})
    assert server.wait(20) == 2
    assert "unrecognized arguments: --header X:Y" in server.err


def test_a_bad_environment_value_is_one_line_and_exit_2(serve: StartServer) -> None:
    server = serve(["app:app"], modules={"app": CONVENTIONS_APP}, env={"WEB_CONCURRENCY": "lots"})
    assert server.wait(20) == 2
    assert server.err.strip().splitlines() == [
        "kamisama-serve: error: environment variable WEB_CONCURRENCY: "
        "expected a whole number, got 'lots'"
    ]


def test_one_worker_is_announced_in_the_singular(serve: StartServer) -> None:
    server = start(serve)
    assert "(1 worker, pid " in server.out


def test_environ_has_server_software_and_joins_repeated_headers(serve: StartServer) -> None:
    server = start(serve)
    headers = "Accept: a/b\r\nAccept: c/d\r\nCookie: x=1\r\nCookie: y=2\r\n"
    raw = f"GET /env HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n"
    response, _ = request(server.port, raw.encode())
    env = json.loads(response.body)
    assert env["SERVER_SOFTWARE"] == SERVER_SOFTWARE
    assert SERVER_SOFTWARE.startswith("kamisama-server/")
    assert env["HTTP_ACCEPT"] == "a/b,c/d"
    assert env["HTTP_COOKIE"] == "x=1; y=2"


@pytest.mark.parametrize(
    ("status", "line"),
    [
        ("299 Custom Thing", b"HTTP/1.1 299 Custom Thing"),
        ("206 PARTIAL CONTENT", b"HTTP/1.1 206 PARTIAL CONTENT"),
        ("200 OK", b"HTTP/1.1 200 OK"),
        ("404", b"HTTP/1.1 404 Not Found"),
    ],
)
def test_the_apps_reason_phrase_goes_out_as_given(
    serve: StartServer, status: str, line: bytes
) -> None:
    server = start(serve)
    for _ in range(2):  # the second time from the per-status cache
        assert get(server, "/status?" + status.replace(" ", "%20"))[0] == line


def test_a_reason_phrase_with_a_control_character_is_a_500(serve: StartServer) -> None:
    server = start(serve)
    assert get(server, "/bad-status")[0] == b"HTTP/1.1 500 Internal Server Error"


def test_header_values_are_stripped_of_surrounding_whitespace(serve: StartServer) -> None:
    server = start(serve)
    _, head = get(server, "/spaces")
    assert b"\r\nSet-Cookie: csrftoken=abc\r\n" in head
    assert b"\r\nX-Tab: v\r\n" in head


def test_server_header_on_by_default_and_off_on_request(serve: StartServer) -> None:
    on = start(serve)
    assert b"\r\nserver: kamisama\r\n" in get(on, "/env")[1]
    off = start(serve, "--no-server-header")
    assert b"\r\nserver:" not in get(off, "/env")[1].lower()


FORWARDED = "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n"


def test_proxy_headers_are_trusted_from_127_0_0_1_by_default(serve: StartServer) -> None:
    """As gunicorn and uvicorn: a local nginx's X-Forwarded-* count out of the box."""
    server = start(serve)
    raw = f"GET /env HTTP/1.1\r\nHost: t\r\n{FORWARDED}Connection: close\r\n\r\n"
    env = json.loads(request(server.port, raw.encode())[0].body)
    assert (env["wsgi.url_scheme"], env["REMOTE_ADDR"]) == ("https", "203.0.113.7")


@pytest.mark.parametrize(
    "extra", [["--no-proxy-headers"], ["--forwarded-allow-ips", "10.0.0.1"]], ids=str
)
def test_proxy_headers_can_be_turned_off(serve: StartServer, extra: list[str]) -> None:
    server = start(serve, *extra)
    raw = f"GET /env HTTP/1.1\r\nHost: t\r\n{FORWARDED}Connection: close\r\n\r\n"
    env = json.loads(request(server.port, raw.encode())[0].body)
    assert (env["wsgi.url_scheme"], env["REMOTE_ADDR"]) == ("http", "127.0.0.1")


@pytest.mark.parametrize(("extra", "trusted"), [([], True), (["--no-proxy-headers"], False)])
def test_proxy_headers_from_a_unix_socket_peer(
    serve: StartServer, tmp_path: Path, extra: list[str], trusted: bool
) -> None:
    """A local proxy on a Unix socket (deploy/nginx.conf) has no address to check: trusted."""
    path = tmp_path / "app.sock"
    server = serve(
        ["app:app", "--bind", f"unix:{path}", "-w", "1", *extra], modules={"app": CONVENTIONS_APP}
    )
    server.wait_listening()
    raw = f"GET /env HTTP/1.1\r\nHost: t\r\n{FORWARDED}Connection: close\r\n\r\n".encode()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(raw)
        env = json.loads(Reader(sock).response().body)
    expected = ("https", "203.0.113.7") if trusted else ("http", None)
    assert (env["wsgi.url_scheme"], env["REMOTE_ADDR"]) == expected
