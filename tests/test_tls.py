"""HTTPS end to end: the real ``kamisama-serve --ssl-certfile/--ssl-keyfile`` and real clients.

A self-signed certificate for 127.0.0.1/localhost is made per test session with
the ``openssl`` command (skipped where there is none); clients trust exactly
that certificate.
"""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from processes import wait_until
from serve_support import SERVE, Server, StartServer, serving

APP = """
    import pathlib, time

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            pathlib.Path("slow-started").touch()
            time.sleep(1.0)
        body = ("wsgi " + environ["wsgi.url_scheme"]).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
"""

ASGI_APP = """
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = ("asgi " + scope["scheme"]).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
"""


class Certificate:
    """A self-signed certificate and its key, as PEM files."""

    def __init__(self, directory: Path, name: str = "server") -> None:
        self.cert = directory / f"{name}.crt"
        self.key = directory / f"{name}.key"
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec",
                "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                "-subj", "/CN=localhost",
                "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-keyout", str(self.key), "-out", str(self.cert),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )  # fmt: skip

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a test certificate")
    return Certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServer]:
    yield from serving(tmp_path)


def start_tls(serve: StartServer, certificate: Certificate, app: str = APP, *extra: str) -> Server:
    server = serve(
        [
            "app:app", "--ssl-certfile", str(certificate.cert),
            "--ssl-keyfile", str(certificate.key),
            "-b", "127.0.0.1:0", "-w", "2", "--timeout", "5", *extra,
        ],
        modules={"app": app},
    )  # fmt: skip
    server.wait_listening()
    return server


def https_url(server: Server, path: str = "/") -> str:
    return f"https://127.0.0.1:{server.port}{path}"


@pytest.mark.parametrize(("app", "body"), [(APP, "wsgi https"), (ASGI_APP, "asgi https")])
def test_https_is_served_and_announced(
    serve: StartServer, certificate: Certificate, app: str, body: str
) -> None:
    server = start_tls(serve, certificate, app)
    (line,) = server.listening_lines()
    assert line["urls"] == f"https://127.0.0.1:{server.port}", server.output()
    with httpx.Client(verify=certificate.client_context(), timeout=5) as client:
        for _ in range(3):  # keep-alive over one TLS connection
            response = client.get(https_url(server))
            assert response.status_code == 200 and response.text == body
    assert server.stop(signal.SIGTERM) == 0, server.output()


def test_a_client_not_trusting_the_certificate_fails_the_handshake(
    serve: StartServer, certificate: Certificate, tmp_path: Path
) -> None:
    server = start_tls(serve, certificate)
    other = Certificate(tmp_path, "other")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(https_url(server), verify=other.client_context(), timeout=5)
    response = httpx.get(https_url(server), verify=certificate.client_context(), timeout=5)
    assert response.text == "wsgi https"


def test_plain_http_to_the_tls_port_is_refused_and_workers_keep_serving(
    serve: StartServer, certificate: Certificate
) -> None:
    server = start_tls(serve, certificate)
    workers = server.started()
    for _ in range(4):  # enough to reach both workers' queues
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            received = b""
            try:
                while chunk := sock.recv(65536):
                    received += chunk
            except ConnectionResetError:
                pass
        assert b"HTTP/1.1" not in received  # no plain-text answer: the handshake failed
    with httpx.Client(verify=certificate.client_context(), timeout=5) as client:
        for _ in range(4):
            response = client.get(https_url(server), headers={"Connection": "close"})
            assert response.text == "wsgi https"
    assert server.started() == workers, "no worker may die or respawn"
    assert server.stop(signal.SIGTERM) == 0, server.output()


def test_sigterm_lets_an_https_request_in_flight_finish_then_exits_0(
    serve: StartServer, certificate: Certificate
) -> None:
    # With threads the worker's loop sees the signal while the app runs (one thread
    # runs a body-less WSGI call inline, so the drain starts after its response).
    server = start_tls(serve, certificate, APP, "--threads", "2")
    result: dict[str, httpx.Response] = {}

    def slow_request() -> None:
        result["slow"] = httpx.get(
            https_url(server, "/slow"), verify=certificate.client_context(), timeout=10
        )

    thread = threading.Thread(target=slow_request)
    thread.start()
    marker = server.directory / "slow-started"
    wait_until(marker.exists, 10, "the slow request to reach the app")
    server.send_signal(signal.SIGTERM)
    thread.join(15)
    assert not thread.is_alive()
    response = result["slow"]
    assert response.status_code == 200 and response.text == "wsgi https"
    assert response.headers["connection"] == "close"
    assert server.wait() == 0, server.output()


def test_sigterm_exits_0_with_a_client_that_never_starts_tls(
    serve: StartServer, certificate: Certificate
) -> None:
    server = start_tls(serve, certificate)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5):
        response = httpx.get(https_url(server), verify=certificate.client_context(), timeout=5)
        assert response.status_code == 200  # others are served meanwhile
        assert server.stop(signal.SIGTERM, timeout=20) == 0, server.output()


@pytest.mark.parametrize("app", [APP, ASGI_APP], ids=["wsgi", "asgi"])
def test_sigterm_closes_idle_tls_keep_alive_connections_and_exits_0_within_a_second(
    serve: StartServer, certificate: Certificate, app: str
) -> None:
    """Clients that hold an idle TLS keep-alive connection and never answer our
    ``close_notify`` (they do not read) must not hold the drain until --timeout."""
    server = start_tls(serve, certificate, app)
    context = certificate.client_context()
    held: list[ssl.SSLSocket] = []
    try:
        for _ in range(4):
            raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            conn = context.wrap_socket(raw, server_hostname="127.0.0.1")
            held.append(conn)
            conn.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            answer = b""
            while not answer.endswith(b"https"):
                chunk = conn.recv(4096)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200")
        began = time.monotonic()
        code = server.stop(signal.SIGTERM, timeout=10)
        took = time.monotonic() - began
    finally:
        for conn in held:
            conn.close()
    print(f"\nexit {code} after {took:.2f}s with {len(held)} idle TLS connections")
    assert code == 0, server.output()
    assert took < 1.0, server.output()


# --------------------------------------------------------------------------- bad files


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SERVE, "app:app", *args, "-b", "127.0.0.1:0", "-w", "1"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_missing_certificate_file_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("def app(environ, start_response): pass\n")
    done = run_cli(["--ssl-certfile", "missing.pem"], tmp_path)
    assert done.returncode == 2
    assert "--ssl-certfile: no such file: 'missing.pem'" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("case", ["not_a_certificate", "key_not_matching", "no_key"])
def test_unusable_certificate_exits_3_naming_the_files(
    tmp_path: Path, certificate: Certificate, case: str
) -> None:
    (tmp_path / "app.py").write_text("def app(environ, start_response): pass\n")
    junk = tmp_path / "junk.pem"
    junk.write_text("this is not PEM\n")
    cert, key = str(certificate.cert), str(certificate.key)
    other_key = str(Certificate(tmp_path, "other").key)
    args = {
        "not_a_certificate": ["--ssl-certfile", str(junk), "--ssl-keyfile", key],
        "key_not_matching": ["--ssl-certfile", cert, "--ssl-keyfile", other_key],
        "no_key": ["--ssl-certfile", cert],
    }[case]
    done = run_cli(args, tmp_path)
    assert done.returncode == 3, done.stderr
    lines = [line for line in done.stderr.splitlines() if "cannot start" in line]
    assert len(lines) == 1, done.stderr
    assert f"TLS certificate {args[1]} with key {args[-1]}: " in lines[0]
    assert done.stdout == ""  # never announced listening
