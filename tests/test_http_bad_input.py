"""Issue 3, "Bad input": a clear answer, and the same server keeps serving."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest
from http_support import (
    Reader,
    connect,
    engine_app,
    good_request,
    request,
    stream_until_answered,
)

from kamisama_server.http.background import BackgroundServer
from kamisama_server.http.config import HttpConfig


@pytest.fixture(scope="module")
def server() -> Iterator[BackgroundServer]:
    with BackgroundServer(engine_app, HttpConfig(limit_request_body=1000)) as srv:
        yield srv


def _get(extra_headers: bytes = b"", line: bytes = b"GET /ok HTTP/1.1") -> bytes:
    return line + b"\r\nHost: t\r\n" + extra_headers + b"\r\n"


BAD_HEADS = {
    "http09_line": (b"GET /\r\n\r\n", 400),
    "http09_version": (b"GET / HTTP/0.9\r\n\r\n", 400),
    "malformed_line": (b"GET  / HTTP/1.1 extra\r\n\r\n", 400),
    "lowercase_method": (b"get / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "bad_version_syntax": (b"GET / HTTP/A.B\r\n\r\n", 400),
    "version_1_2": (b"GET / HTTP/1.2\r\n\r\n", 505),
    "version_2_0": (b"GET / HTTP/2.0\r\n\r\n", 505),
    "version_3_0": (b"GET / HTTP/3.0\r\n\r\n", 505),
    "header_without_colon": (_get(b"NoColonHere\r\n"), 400),
    "nul_in_header": (_get(b"X-A: a\x00b\r\n"), 400),
    "bare_cr_in_header": (_get(b"X-A: a\rb\r\n"), 400),
    "space_before_colon": (_get(b"X-A : b\r\n"), 400),
    "obs_fold": (_get(b"X-A: a\r\n b\r\n"), 400),
    "request_line_too_long": (_get(line=b"GET /" + b"a" * 100_000 + b" HTTP/1.1"), 414),
    "request_line_just_over": (_get(line=b"GET /" + b"a" * 8190 + b" HTTP/1.1"), 414),
    "too_many_headers": (_get(b"".join(b"X-%d: v\r\n" % i for i in range(500))), 431),
    "header_too_large": (_get(b"X-Big: " + b"v" * 100_000 + b"\r\n"), 431),
    "cl_and_te": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "duplicate_cl": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        400,
    ),
    "conflicting_cl": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    ),
    "cl_list": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
    "cl_negative": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: -3\r\n\r\nabc", 400),
    "cl_not_a_number": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\nabc", 400),
    "te_not_chunked": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        400,
    ),
    "te_twice": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\n"
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
        400,
    ),
    "chunked_on_http10": (
        b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    "bad_chunk_size": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
        400,
    ),
    "negative_chunk_size": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n\r\n",
        400,
    ),
    "chunk_size_overflow": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"f" * 20
        + b"\r\n\r\n",
        400,
    ),
    "duplicate_host": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: evil\r\n\r\n", 400),
    "asterisk_target_not_options": (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "forbidden_trailer": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1\r\na\r\n0\r\nHost: evil\r\n\r\n",
        400,
    ),
    "too_many_trailers": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"
        + b"".join(b"X-T%d: v\r\n" % i for i in range(101))
        + b"\r\n",
        431,
    ),
    "trailer_too_large": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"
        b"X-Big: " + b"v" * 9000 + b"\r\n\r\n",
        431,
    ),
    "content_length_over_limit": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n",
        413,
    ),
    "chunked_body_over_limit": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"64\r\n" + b"x" * 100 + b"\r\n" for _ in range(11))
        + b"0\r\n\r\n",
        413,
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADS))
def test_bad_input_gets_clear_answer_and_close(server: BackgroundServer, case: str) -> None:
    raw, expected = BAD_HEADS[case]
    resp, closed = request(server.port, raw)
    assert resp.status == expected, resp
    assert resp.header("connection") == "close"
    assert closed
    # The same server still answers a good request.
    assert good_request(server.port).status == 200


def test_bad_request_after_good_one_on_same_connection(server: BackgroundServer) -> None:
    with connect(server.port) as sock:
        sock.sendall(_get() + b"GET / HTTP/1.1\r\nHost: t\r\nBroken\r\n\r\n")
        reader = Reader(sock)
        assert reader.response().status == 200
        assert reader.response().status == 400
        assert reader.closed()
    assert good_request(server.port).status == 200


@pytest.mark.parametrize(
    ("path", "expected_close"),
    [("/raise", False), ("/bad-status", False), ("/bad-header", False)],
)
def test_app_errors_before_head_answer_500_and_log(
    server: BackgroundServer, path: str, expected_close: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="kamisama.http")
    resp, closed = request(server.port, _get(line=f"GET {path} HTTP/1.1".encode()))
    assert resp.status == 500
    assert b"set-cookie" not in resp.raw_head
    assert closed
    assert any(r.exc_info for r in caplog.records), "traceback must be logged"
    assert good_request(server.port).status == 200


def test_app_error_after_head_closes_connection(server: BackgroundServer) -> None:
    with connect(server.port) as sock:
        sock.sendall(_get(line=b"GET /raise-after-head HTTP/1.1"))
        reader = Reader(sock)
        reader.sock.settimeout(5)
        data = reader.read_to_close()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b"partial")  # truncated: 7 of the 100 promised bytes, then close
    assert good_request(server.port).status == 200


def test_body_error_while_app_reads_gives_400(server: BackgroundServer) -> None:
    with connect(server.port) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
        )
        sock.sendall(b"xyz\r\n")
        reader = Reader(sock)
        assert reader.response().status == 400
        assert reader.closed()
    assert good_request(server.port).status == 200


def test_half_closed_incomplete_head_gets_400(server: BackgroundServer) -> None:
    with connect(server.port) as sock:
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: t\r\n")
        sock.shutdown(socket.SHUT_WR)
        reader = Reader(sock)
        assert reader.response().status == 400
        assert reader.closed()


def test_http10_request_without_host_is_served(server: BackgroundServer) -> None:
    resp, closed = request(server.port, b"GET /ok HTTP/1.0\r\n\r\n")
    assert resp.status == 200 and closed


_CHUNKED_HEAD = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_endless_trailer_field_gets_431(server: BackgroundServer) -> None:
    head = _CHUNKED_HEAD + b"1\r\na\r\n0\r\nX-Endless: "
    status, _ = stream_until_answered(server.port, head, b"v" * 4096, 32 * 1024 * 1024)
    assert status == 431
    assert good_request(server.port).status == 200


def test_endless_chunk_extension_gets_400(server: BackgroundServer) -> None:
    head = _CHUNKED_HEAD + b"1;ext="
    status, _ = stream_until_answered(server.port, head, b"e" * 4096, 32 * 1024 * 1024)
    assert status == 400
    assert good_request(server.port).status == 200


def test_slow_trailers_get_408_after_the_header_timeout() -> None:
    config = HttpConfig(header_timeout=0.5)
    with BackgroundServer(engine_app, config) as srv, connect(srv.port) as sock:
        sock.sendall(_CHUNKED_HEAD + b"1\r\na\r\n0\r\nX-Slow: ")
        started = time.monotonic()
        reader = Reader(sock)
        assert reader.response().status == 408
        assert reader.closed()
        assert time.monotonic() - started < 3.0
