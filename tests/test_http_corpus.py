"""gunicorn's raw-request corpus: invalid requests get a 4xx/5xx or a close, valid ones a 200.

The corpus lives beside the checkout (``../shared/corpus/gunicorn``, see its
README.md); it is data only and is never copied into the project.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_support import Reader, Response, connect, engine_app, good_request

from kamisama_server.http.background import BackgroundServer

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "gunicorn"
MANIFEST = CORPUS / "manifest.json"
FILES: dict[str, dict[str, object]] = (
    json.loads(MANIFEST.read_text())["files"] if MANIFEST.is_file() else {}
)
# Where we knowingly differ from gunicorn's verdict, and why: the answer we give instead.
DEVIATIONS: dict[str, tuple[str, str]] = {
    "invalid/006.http": ("served", "a 4112-byte request line: issue 3 sets the limit to 8190"),
    "valid/009.http": ("rejected", "Transfer-Encoding with Content-Length is refused (smuggling)"),
    "valid/013.http": ("rejected", "llhttp refuses whitespace inside chunk extensions"),
    "valid/027.http": ("rejected", "llhttp refuses raw non-ASCII bytes in the request target"),
    "valid/031.http": ("rejected", "llhttp knows a fixed set of methods, not any token"),
    "valid/099.http": ("rejected", "the file holds 8599 of the 17914 body bytes it announces"),
    **{
        name: ("rejected", "a transfer coding before chunked cannot be decoded (RFC 9112 6.1)")
        for name in (
            "valid/025.http",
            "valid/025_line.http",
            "valid/029.http",
            "valid/030.http",
            "valid/rfc9112_smuggle_gzip_chunked_01.http",
            "valid/rfc9112_smuggle_te_identity_chunked_01.http",
        )
    },
}
_HEX = re.compile(rb"\\x([0-9a-fA-F]{2})")
# A request line of HTTP/1.x and the field lines after it; fields among them.
_HEAD = re.compile(rb"(?m)^[!-~]+ [^ \r\n]+ HTTP/1\.([01])\r?\n((?:[^\r\n]+\r?\n)*)")
_HOST_FIELD = re.compile(rb"(?im)^host[ \t]*:")
_KEEP_ALIVE = re.compile(rb"(?im)^connection[ \t]*:[ \t]*keep-alive")


def deviation(name: str, data: bytes) -> tuple[str, str]:
    """Our verdict where it is not gunicorn's, with the reason; ("", "") where it is.

    Beyond the files listed in ``DEVIATIONS``, a rule: a valid file with an
    HTTP/1.1 request without Host that the server reaches (no HTTP/1.0 request
    closed the connection before it) is refused (RFC 9112 3.2); gunicorn serves it.
    """
    listed = DEVIATIONS.get(name)
    if listed is not None:
        return listed
    if FILES[name]["kind"] != "valid":
        return ("", "")
    for minor, fields in _HEAD.findall(data):
        if minor == b"1" and not _HOST_FIELD.search(fields):
            return ("rejected", "an HTTP/1.1 request without Host is refused (RFC 9112 3.2)")
        if minor == b"0" and not _KEEP_ALIVE.search(fields):
            break  # the connection closes after this one
    return ("", "")


def decode(text: bytes) -> bytes:
    """The corpus format: file line breaks are not data; escapes stand for bytes."""
    data = text.replace(b"\n", b"")
    data = data.replace(b"\\r\\n", b"\r\n").replace(b"\\0", b"\x00")
    data = data.replace(b"\\n", b"\n").replace(b"\\t", b"\t")
    return _HEX.sub(lambda m: bytes([int(m.group(1), 16)]), data)


def exchange(port: int, data: bytes) -> tuple[list[Response], bool]:
    """Send ``data``, half-close, collect every response until the server closes."""
    responses: list[Response] = []
    with connect(port, timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reader = Reader(sock)
        for _ in range(20):
            try:
                responses.append(reader.response())
            except EOFError:
                break
            except (ConnectionResetError, TimeoutError):
                return responses, False
            if responses[-1].header("connection") == "close":
                break
        return responses, reader.closed(timeout=5)


@pytest.fixture(scope="module")
def server() -> Iterator[BackgroundServer]:
    if not FILES:
        pytest.skip(f"corpus not found at {CORPUS}")
    with BackgroundServer(engine_app) as srv:
        yield srv


@pytest.mark.parametrize("name", sorted(FILES) or ["<no corpus>"])
def test_corpus_request(server: BackgroundServer, name: str) -> None:
    assert_corpus_verdict(name, server.port)


def assert_corpus_verdict(name: str, port: int) -> None:
    """Send one corpus file on a fresh connection, judge the answer by the manifest
    (and our ``deviation``), then check a good request is still served."""
    entry = FILES[name]
    data = decode((CORPUS / name).read_bytes())
    responses, closed = exchange(port, data)
    statuses = [r.status for r in responses]
    verdict = deviation(name, data)[0]
    if verdict == "served":
        assert statuses and statuses[0] == 200, f"{name}: {statuses}"
    elif verdict == "rejected":
        assert closed and statuses and statuses[-1] >= 400, f"{name}: {statuses}"
    elif entry["config_dependent"]:
        # Judged leniently: an answer or a close, no hang; checked below by the good request.
        assert closed, f"{name}: connection neither answered nor closed: {statuses}"
    elif entry["kind"] == "valid":
        assert statuses == [200] * int(str(entry["requests"])), f"{name}: {statuses}"
    else:
        assert closed, f"{name}: invalid request left the connection open"
        assert not statuses or statuses[-1] >= 400, f"{name}: {statuses}"
    assert good_request(port).status == 200
