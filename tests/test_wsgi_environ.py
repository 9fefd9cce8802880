"""The environ builder: PEP 3333 keys from a parsed request head."""

from __future__ import annotations

import io
import sys

from kamisama_server.http.head import RequestHead
from kamisama_server.http.wsgi_environ import EnvironBuilder, decode_path, header_key, split_root
from kamisama_server.http.wsgi_file import FileWrapper


def make_head(**kw: object) -> RequestHead:
    fields: dict[str, object] = {
        "method": "GET",
        "raw_path": b"/",
        "query_string": b"",
        "http_version": "1.1",
        "headers": [],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    fields.update(kw)
    return RequestHead(**fields)  # type: ignore[arg-type]


def build(multithread: bool = False, **kw: object) -> dict[str, object]:
    builder = EnvironBuilder(multithread=multithread, file_wrapper=FileWrapper)
    return builder.build(make_head(**kw), io.BytesIO())


def test_required_keys_and_constant_values() -> None:
    env = build(
        method="POST",
        raw_path=b"/a/b",
        query_string=b"x=1&y=%20",
        headers=[(b"host", b"example.com:8000"), (b"content-type", b"text/plain")],
    )
    assert env["REQUEST_METHOD"] == "POST"
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/a/b"
    assert env["QUERY_STRING"] == "x=1&y=%20"  # the query stays encoded
    assert env["SERVER_NAME"] == "127.0.0.1"
    assert env["SERVER_PORT"] == "8000"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"] == "50000"
    assert env["HTTP_HOST"] == "example.com:8000"
    assert env["CONTENT_TYPE"] == "text/plain"
    assert "HTTP_CONTENT_TYPE" not in env
    assert env["wsgi.version"] == (1, 0)
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.errors"] is sys.stderr
    assert env["wsgi.multithread"] is False
    assert env["wsgi.multiprocess"] is True
    assert env["wsgi.run_once"] is False
    assert env["wsgi.input_terminated"] is True
    assert env["wsgi.file_wrapper"] is FileWrapper
    assert build(multithread=True)["wsgi.multithread"] is True
    assert build(http_version="1.0")["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert build(scheme="https")["wsgi.url_scheme"] == "https"


def test_every_key_and_value_is_a_native_string() -> None:
    env = build(raw_path=b"/caf%C3%A9", headers=[(b"x-name", b"caf\xc3\xa9")])
    for key, value in env.items():
        assert type(key) is str
        if not key.startswith("wsgi."):
            assert type(value) is str, key


def test_path_is_percent_decoded_as_latin1() -> None:
    # PEP 3333: the bytes of the decoded path, each one a code point (latin-1).
    env = build(raw_path=b"/caf%C3%A9/a%2Fb")
    assert env["PATH_INFO"] == "/caf\xc3\xa9/a/b"
    assert env["PATH_INFO"].encode("latin-1").decode("utf-8") == "/café/a/b"
    assert decode_path(b"/plain") == "/plain"
    assert decode_path(b"/%zz") == "/%zz"  # an invalid escape stays as sent


def test_duplicate_headers_are_joined() -> None:
    env = build(
        headers=[
            (b"accept", b"text/html"),
            (b"accept", b"application/json"),
            (b"cookie", b"a=1"),
            (b"cookie", b"b=2"),
        ]
    )
    assert env["HTTP_ACCEPT"] == "text/html,application/json"  # as gunicorn, wsgiref
    assert env["HTTP_COOKIE"] == "a=1; b=2"


def test_header_names_with_underscores_are_dropped() -> None:
    # X_Forwarded_For would otherwise overwrite (or join) the dashed header's key.
    env = build(
        headers=[
            (b"x-forwarded-for", b"10.0.0.1"),
            (b"x_forwarded_for", b"6.6.6.6"),
            (b"content_length", b"99"),
        ]
    )
    assert env["HTTP_X_FORWARDED_FOR"] == "10.0.0.1"
    assert "CONTENT_LENGTH" not in env
    assert header_key(b"x_a") is None
    assert header_key(b"x-a") == "HTTP_X_A"
    assert header_key(b"content-length") == "CONTENT_LENGTH"


def test_header_key_cache_is_bounded() -> None:
    builder = EnvironBuilder(multithread=False, file_wrapper=FileWrapper)
    for i in range(2000):
        env = builder.build(make_head(headers=[(f"x-h{i}".encode(), b"v")]), None)
        assert env[f"HTTP_X_H{i}"] == "v"
    assert len(builder._keys) <= 512


def test_script_name_from_root_path() -> None:
    # A proxy that forwards the full path, and one that strips the mount point.
    assert build(root_path="/api", raw_path=b"/api/users")["PATH_INFO"] == "/users"
    env = build(root_path="/api", raw_path=b"/users")
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/api", "/users")
    assert build(root_path="/api/", raw_path=b"/api")["PATH_INFO"] == ""
    assert build(root_path="/api", raw_path=b"/apiary")["PATH_INFO"] == "/apiary"
    assert build(root_path="/caf\xe9", raw_path=b"/x")["SCRIPT_NAME"] == "/caf\xc3\xa9"
    assert split_root("/a/b", "") == "/a/b"


def test_unix_socket_takes_server_name_from_host() -> None:
    env = build(server=None, client=None, headers=[(b"host", b"example.com:81")])
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("example.com", "81")
    assert "REMOTE_ADDR" not in env
    env = build(server=None, headers=[(b"host", b"[::1]:9000")])
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("[::1]", "9000")
    env = build(server=None, scheme="https", headers=[(b"host", b"example.com")])
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("example.com", "443")
    env = build(server=None)
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("localhost", "80")


def test_environs_are_independent() -> None:
    builder = EnvironBuilder(multithread=False, file_wrapper=FileWrapper)
    a = builder.build(make_head(headers=[(b"x-a", b"1")]), None)
    a["extra"] = 1
    b = builder.build(make_head(), None)
    assert "extra" not in b and "HTTP_X_A" not in b
