"""wsgi.input: file semantics over a body that arrives in chunks."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest

from kamisama_server.http.errors import RequestBodyTooLarge
from kamisama_server.http.wsgi_input import InputStream

BODY = b"line one\nline two\n\nlast line without newline"


def chunked(data: bytes, size: int, error: BaseException | None = None) -> Callable[[], bytes]:
    """A pull function handing out ``data`` in ``size`` pieces, then b"" (or ``error``)."""
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    calls = {"after_end": 0}

    def pull() -> bytes:
        if pieces:
            return pieces.pop(0)
        if error is not None:
            raise error
        calls["after_end"] += 1
        assert calls["after_end"] == 1, "pulled again after the end of the body"
        return b""

    return pull


def streams(data: bytes) -> list[InputStream]:
    """The same body as every kind of stream the adapter makes."""
    return [InputStream(None, data)] + [InputStream(chunked(data, n)) for n in (1, 3, 7, 1000)]


@pytest.mark.parametrize("size", [0, 1, 2, 5, 9, 10, 100])
def test_read_n_matches_bytesio(size: int) -> None:
    for stream in streams(BODY):
        ref = io.BytesIO(BODY)
        for _ in range(200):
            got = stream.read(size)
            assert got == ref.read(size)
            if not got and size:
                break


def test_read_all_and_none() -> None:
    for stream in streams(BODY):
        assert stream.read(4) == b"line"
        assert stream.read() == BODY[4:]
        assert stream.read() == b""
        assert stream.read(None) == b""


def test_readline_matches_bytesio() -> None:
    for limit in (-1, 1, 4, 9, 100):
        for stream in streams(BODY):
            ref = io.BytesIO(BODY)
            for _ in range(200):
                got = stream.readline(limit)
                assert got == ref.readline(limit)
                if not got:
                    break


def test_readlines_and_iteration() -> None:
    for stream in streams(BODY):
        assert stream.readlines() == io.BytesIO(BODY).readlines()
    for stream in streams(BODY):
        assert list(stream) == io.BytesIO(BODY).readlines()
    for stream in streams(BODY):
        assert stream.readlines(5) == [b"line one\n"]
        assert stream.readline() == b"line two\n"


def test_mixed_reads() -> None:
    for stream in streams(BODY):
        assert stream.readline() == b"line one\n"
        assert stream.read(3) == b"lin"
        assert stream.readline(2) == b"e "
        assert stream.read() == BODY[14:]


def test_a_body_error_is_raised_by_read_and_kept() -> None:
    stream = InputStream(chunked(b"abcdef", 4, RequestBodyTooLarge("too large")))
    assert stream.read(4) == b"abcd"
    with pytest.raises(OSError) as info:
        stream.read()
    assert isinstance(info.value, RequestBodyTooLarge)
    assert stream.body_error is info.value
    with pytest.raises(RequestBodyTooLarge):
        stream.read(1)


def test_a_pre_read_error_comes_after_the_data() -> None:
    err = RequestBodyTooLarge("too large")
    stream = InputStream(None, b"abc", err)
    assert stream.read(3) == b"abc"
    assert stream.body_error is None
    with pytest.raises(RequestBodyTooLarge):
        stream.readline()
    assert stream.body_error is err


def test_memory_holds_one_chunk() -> None:
    # Reading 10 MB in 64 KiB pieces never keeps more than one chunk of the engine's.
    total = 10 * 1024 * 1024
    pulled = {"n": 0}

    def pull() -> bytes:
        if pulled["n"] >= total:
            return b""
        pulled["n"] += 100_000
        return b"x" * 100_000

    stream = InputStream(pull)
    read = 0
    for _ in range(10_000):
        piece = stream.read(65536)
        if not piece:
            break
        read += len(piece)
        assert pulled["n"] - read < 100_000 + 65536
    assert read == pulled["n"]
