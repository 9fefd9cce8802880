"""The h11 fallback parser: same callbacks as httptools on the same bytes, and how it is chosen.

The engine's own suites run again on h11 in ``tests/test_h11_*.py`` (see
h11_rerun). Here the two parsers are compared directly: each input is fed to
httptools and to ``H11RequestParser`` whole, a byte at a time and in 7-byte
pieces, and the callbacks they make must match. httptools reports a request's
parts as they arrive and h11 only once a head is complete, so events after the
last complete head or message are not compared, nor is what came before an
error (only that both refuse).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11
import httptools
import pytest
from http_support import Reader, connect, engine_app, good_request
from serve_support import StartServer, serving
from test_http_corpus import CORPUS, FILES, decode

from kamisama_server.http import parser_choice
from kamisama_server.http.background import BackgroundServer
from kamisama_server.http.config import HttpConfig
from kamisama_server.http.h11_parser import METHODS, H11RequestParser

Event = tuple[Any, ...]


class Recorder:
    """Callbacks that write down what a parser reports, pieces of one part joined."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.parser: Any = None

    def _piece(self, kind: str, data: bytes) -> None:
        if self.events and self.events[-1][0] == kind:
            self.events[-1] = (kind, self.events[-1][1] + data)
        else:
            self.events.append((kind, data))

    def on_message_begin(self) -> None:
        self.events.append(("begin",))

    def on_url(self, url: bytes) -> None:
        self._piece("url", bytes(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp keeps a value's trailing whitespace (the engine strips it), h11 strips it.
        self.events.append(("header", bytes(name), bytes(value).rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        p = self.parser
        head = (p.get_method(), p.get_http_version(), p.should_keep_alive(), p.should_upgrade())
        self.events.append(("head", *head))

    def on_body(self, body: bytes) -> None:
        self._piece("body", bytes(body))

    def on_message_complete(self) -> None:
        self.events.append(("complete",))

    def on_chunk_header(self) -> None:
        self.events.append(("chunk",))

    def on_chunk_complete(self) -> None:
        self.events.append(("chunk_end",))


def parse(kind: str, data: bytes, step: int) -> tuple[list[Event], tuple[Any, ...]]:
    """Feed ``data`` in ``step``-byte pieces: the events, then ("ok",), ("error",) or
    ("upgrade", absolute position of the first byte after the HTTP part)."""
    recorder = Recorder()
    parser: Any
    if kind == "httptools":
        parser = httptools.HttpRequestParser(recorder)
    else:
        parser = H11RequestParser(recorder)
    recorder.parser = parser
    position = 0
    try:
        while position < len(data):
            piece = data[position : position + step]
            try:
                parser.feed_data(piece)
            except httptools.HttpParserUpgrade as exc:
                return recorder.events, ("upgrade", position + exc.args[0])
            position += len(piece)
    except httptools.HttpParserError:
        return [], ("error",)
    events = recorder.events
    last = max((i for i, e in enumerate(events) if e[0] in ("head", "complete")), default=-1)
    return events[: last + 1], ("ok",)


def assert_same(data: bytes) -> None:
    steps = {len(data) or 1, 7} | ({1} if len(data) < 25_000 else set())
    for step in sorted(steps):
        expected = parse("httptools", data, step)
        assert parse("h11", data, step) == expected, f"fed in {step}-byte pieces"


STREAMS = {
    "pipelined": b"GET /a?x=1 HTTP/1.1\r\nHost: t\r\n\r\n"
    b"POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
    b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n"
    b"GET /d HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    "blank_lines_between": b"\r\n\r\nGET /a HTTP/1.1\r\nHost: t\r\n\r\n"
    b"\r\n\nGET /b HTTP/1.1\r\n\r\n",
    "no_host_on_1_1": b"GET /a HTTP/1.1\r\nX-A: 1\r\n\r\n"
    b"POST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
    "http10_keep_alive": b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    b"GET /b HTTP/1.0\r\n\r\n",
    "connection_tokens": b"GET / HTTP/1.1\r\nHost: t\r\nConnection: foo, Close\r\n\r\n",
    "trailers": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\nab\r\n0\r\nX-Sum: 1\r\nX-Other: 2\r\n\r\n",
    "raw_header_case_and_ows": b"GET / HTTP/1.1\r\nhOsT:   t  \r\nX-Empty:\r\nX-Tab: a\tb\r\n\r\n",
    "obs_text_value": b"GET / HTTP/1.1\r\nHost: t\r\nX-A: caf\xc3\xa9\r\n\r\n",
    "websocket_upgrade": b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n\x81\x05frame",
    "upgrade_without_connection_token": b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: h2c\r\n\r\n"
    b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n",
    "upgrade_with_body": b"POST / HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: x\r\n"
    b"Content-Length: 3\r\n\r\nabcRAW",
    "connect": b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\nTLS...",
    "expect_continue": b"PUT /u HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
    b"Content-Length: 4\r\n\r\nbody",
    "big_body": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 20000\r\n\r\n" + b"x" * 20000,
    "data_after_close": b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    b"GET / HTTP/1.1\r\n\r\n",
    "http10_then_more": b"GET / HTTP/1.0\r\n\r\nGET /again HTTP/1.0\r\n\r\n",
    "lowercase_method": b"get / HTTP/1.1\r\nHost: t\r\n\r\n",
    "unknown_method_early": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "binary_junk": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "obs_fold": b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n",
    "duplicate_length": b"POST / HTTP/1.1\r\nHost: t\r\n"
    b"Content-Length: 1\r\nContent-Length: 1\r\n\r\na",
    "length_list": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1, 1\r\n\r\na",
    "length_and_chunked": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "chunk_size_over_64_bits": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"1" + b"0" * 16 + b"\r\nabc",
    "control_byte_in_value": b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n",
    "bare_lf_after_request_line": b"GET / HTTP/1.1\nHost: t\r\n\r\n",
    "bare_lf_after_field": b"GET / HTTP/1.1\r\nHost: t\nX-A: 1\r\n\r\n",
    "bare_lf_ends_head": b"GET / HTTP/1.1\r\nHost: t\r\n\n",
    "bare_lf_after_trailer": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\nab\r\n0\r\nX-A: 1\nX-B: 2\r\n\r\n",
    "bare_lf_ends_trailers": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\nab\r\n0\r\nX-A: 1\r\n\n",
    "bare_lf_ends_empty_trailers": b"POST / HTTP/1.1\r\nHost: t\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\n",
    # h11 is given 8 KB at a time: requests, heads and bodies across those boundaries.
    "many_across_slices": b"".join(
        b"GET /%d HTTP/1.1\r\nHost: t\r\n\r\n" % i
        + b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (i * 7)
        + b"b" * (i * 7)
        + b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % (i * 5 + 1)
        + b"c" * (i * 5 + 1)
        + b"\r\n0\r\n\r\n"
        for i in range(60)
    ),
}


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_h11_reports_what_httptools_reports(name: str) -> None:
    assert_same(STREAMS[name])


# Where the parsers differ on their own, the engine's own checks give one answer.
ENGINE_VERDICTS = {
    "gzip_chunked": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"2\r\nab\r\n0\r\n\r\n",
        400,
    ),
    "identity_chunked": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "double_space_after_method": (b"GET  /ok HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "double_space_after_target": (b"GET /ok  HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "double_space_pipelined": (
        b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\nGET  /ok HTTP/1.1\r\nHost: t\r\n\r\n",
        400,
    ),
    "bare_lf_head": (b"GET /ok HTTP/1.1\nHost: t\n\n", 400),
    "bare_lf_trailer": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nab\r\n0\r\nX-A: 1\n\r\n",
        400,
    ),
    "no_host_on_1_1": (b"GET /ok HTTP/1.1\r\nX-A: 1\r\n\r\n", 400),
    "no_host_pipelined": (b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\nGET /ok HTTP/1.1\r\n\r\n", 400),
    "no_host_on_1_0": (b"GET /ok HTTP/1.0\r\n\r\n", 200),
    "megabyte_chunk_extension": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2;ext=" + b"e" * 1_000_000 + b"\r\nab\r\n0\r\n\r\n",
        400,
    ),
    "absolute_form_names_the_host": (
        b"GET http://target.example:81/host HTTP/1.1\r\nHost: other\r\n\r\n",
        200,
    ),
}


@pytest.mark.parametrize("parser", ["httptools", "h11"])
@pytest.mark.parametrize("name", sorted(ENGINE_VERDICTS))
def test_the_engine_gives_one_verdict_on_either_parser(parser: str, name: str) -> None:
    raw, status = ENGINE_VERDICTS[name]
    with BackgroundServer(host_app, HttpConfig(parser=parser)) as srv, connect(srv.port) as sock:
        # Refused before the megabyte was all sent, the answer is waiting all the same.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(raw)
        reader = Reader(sock)
        responses = [reader.response()]
        if name in ("double_space_pipelined", "no_host_pipelined"):
            responses.append(reader.response())
        assert responses[-1].status == status
        if name == "absolute_form_names_the_host":
            assert responses[-1].body == b"target.example:81"


async def host_app(exchange: Any) -> None:
    """``/host`` answers the Host the app sees; anything else is the engine test app."""
    if exchange.head.raw_path != b"/host":
        await engine_app(exchange)
        return
    host = dict(exchange.head.headers).get(b"host", b"")
    await exchange.send_head(200, [(b"content-length", b"%d" % len(host))])
    await exchange.write(host)
    await exchange.end()


def test_many_small_pipelined_requests_cost_linear_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """h11 gets at most a slice (8 KB) at a time, plus what the last request left over.

    Handing each request's connection everything left in a read made 9,000 tiny
    pipelined requests in one 256 KB read cost ~2 s of copying; slices keep it linear.
    """
    sizes: list[int] = []
    receive = h11.Connection.receive_data

    def counting(self: h11.Connection, data: bytes) -> None:
        sizes.append(len(data))
        receive(self, data)

    monkeypatch.setattr(h11.Connection, "receive_data", counting)
    data = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" * 9_000
    recorder = Recorder()
    parser = recorder.parser = H11RequestParser(recorder)
    parser.feed_data(data)
    assert recorder.events.count(("complete",)) == 9_000
    assert max(sizes) <= 8192  # never all that is left of the read
    assert sum(sizes) <= len(data) + 9_000 * 8192  # each request re-hands at most a slice


def test_every_method_h11_allows_is_one_llhttp_knows() -> None:
    for method in sorted(METHODS):
        data = method + b" /x HTTP/1.1\r\nHost: t\r\n\r\n"
        if method == b"CONNECT":
            data = b"CONNECT t:1 HTTP/1.1\r\nHost: t\r\n\r\n"
        assert parse("httptools", data, len(data))[1] != ("error",), method
        assert_same(data)


# The corpus files where the parsers differ on their own. Where the engine then
# gives the same answer anyway, it says so; the others are h11_parser's known
# differences (also xfailed in test_h11_http_corpus).
_ENGINE_REFUSES_TARGET = "the engine refuses this request target itself (400)"
_ENGINE_REFUSES_TRAILER = "the engine refuses framing fields in trailers itself (400)"
_TE_CODINGS = "h11 refuses a coding before chunked; so does the engine (400)"
PARSER_DIFFERENCES = {
    "invalid/042.http": "h11 refuses a second Host; so does the engine",
    "invalid/chunked_09.http": "h11 accepts whitespace after a chunk size",
    "invalid/chunked_14.http": "h11 accepts a bare CR in a chunk extension",
    "invalid/rfc9110_trailer_forbidden_cl_01.http": _ENGINE_REFUSES_TRAILER,
    "invalid/rfc9110_trailer_forbidden_te_01.http": _ENGINE_REFUSES_TRAILER,
    "invalid/rfc9112_target_authority_non_connect_01.http": _ENGINE_REFUSES_TARGET,
    "invalid/rfc9112_target_relative_01.http": _ENGINE_REFUSES_TARGET,
    "valid/013.http": "h11 accepts whitespace in chunk extensions",
    "valid/025.http": _TE_CODINGS,
    "valid/025_line.http": _TE_CODINGS,
    "valid/029.http": _TE_CODINGS,
    "valid/030.http": _TE_CODINGS,
    "valid/rfc9112_smuggle_gzip_chunked_01.http": _TE_CODINGS,
    "valid/rfc9112_smuggle_te_identity_chunked_01.http": _TE_CODINGS,
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.xfail(reason=PARSER_DIFFERENCES[name], strict=True))
        if name in PARSER_DIFFERENCES
        else name
        for name in sorted(FILES) or ["<no corpus>"]
    ],
)
def test_corpus_parsed_alike(name: str) -> None:
    if not FILES:
        pytest.skip(f"corpus not found at {CORPUS}")
    assert_same(decode((CORPUS / name).read_bytes()))


# Choosing the parser -------------------------------------------------------------------------


def test_parser_names_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown HTTP parser"):
        HttpConfig(parser="llhttp")
    assert HttpConfig(parser="h11").parser == "h11"


def test_auto_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(parser_choice.ENV_VAR, raising=False)
    assert parser_choice.resolve("auto") == "httptools"
    monkeypatch.setenv(parser_choice.ENV_VAR, "h11")
    assert parser_choice.resolve("auto") == "h11"
    assert parser_choice.resolve("httptools") == "httptools"  # an explicit choice wins
    monkeypatch.setenv(parser_choice.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="bogus"):
        HttpConfig()


@pytest.fixture(params=["httptools", "h11"])
def server(request: pytest.FixtureRequest) -> Iterator[BackgroundServer]:
    with BackgroundServer(engine_app, HttpConfig(parser=request.param)) as srv:
        yield srv


def test_each_server_runs_the_parser_its_config_names(server: BackgroundServer) -> None:
    # Whitespace after a chunk size is where the two disagree on the wire: h11 serves it.
    raw = (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2 \r\nab\r\n0\r\n\r\n"
    )
    with connect(server.port) as sock:
        sock.sendall(raw)
        response = Reader(sock).response()
    assert response.status == (200 if server.config.parser == "h11" else 400)
    assert good_request(server.port).status == 200


def test_fallback_when_httptools_cannot_be_imported(tmp_path: Path) -> None:
    """A real interpreter where ``import httptools`` fails serves with h11, absolute URLs too."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["httptools"] = None  # import httptools now raises ImportError
        sys.path.insert(0, sys.argv[1])
        from http_support import Reader, connect, engine_app
        from kamisama_server.http import parser_choice
        from kamisama_server.http.background import BackgroundServer
        from kamisama_server.http.config import HttpConfig

        assert parser_choice.resolve("auto") == "h11"
        try:
            HttpConfig(parser="httptools")
        except ValueError as exc:
            print("explicit:", exc)
        with BackgroundServer(engine_app) as srv, connect(srv.port) as sock:
            sock.sendall(
                b"POST http://example.com/echo?q=1 HTTP/1.1\\r\\nHost: example.com\\r\\n"
                b"Transfer-Encoding: chunked\\r\\n\\r\\n5\\r\\nhello\\r\\n0\\r\\n\\r\\n"
                b"GET /ok HTTP/1.1\\r\\nHost: t\\r\\nX: y\\r\\n\\r\\n"
                b"GET / HTTP/1.1\\r\\nBroken\\r\\n\\r\\n"
            )
            reader = Reader(sock)
            for _ in range(3):
                response = reader.response()
                print(response.status, response.body if response.status == 200 else "")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != parser_choice.ENV_VAR}
    done = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "explicit: the httptools parser is not installed",
        "200 b'hello'",
        "200 b'ok /ok'",
        "400 ",
    ]


ECHO_APP = """
    def app(environ, start_response):
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
"""


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServer]:
    yield from serving(tmp_path)


@pytest.mark.parametrize("parser", ["", "h11"])
def test_kamisama_serve_follows_the_environment_variable(serve: StartServer, parser: str) -> None:
    env = {parser_choice.ENV_VAR: parser} if parser else {}
    server = serve(
        ["app:app", "-b", "127.0.0.1:0", "-w", "1", "--timeout", "5"],
        modules={"app": ECHO_APP},
        env=env,
    )
    port = server.wait_listening()
    with connect(port) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2 \r\nab\r\n0\r\n\r\n"
        )
        response = Reader(sock).response()
    assert response.status == (200 if parser == "h11" else 400), server.output()
    assert server.get("/").status_code == 200
    assert server.stop() == 0, server.output()
