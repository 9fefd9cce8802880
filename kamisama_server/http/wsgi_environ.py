"""Build the PEP 3333 ``environ`` dict from a parsed request head.

This is on the hot path of every WSGI request, so the constant keys live in a
base dict copied once per request (``dict.copy`` is a single C call) and the
mapping from a header name to its ``HTTP_*`` key is cached.
"""

from __future__ import annotations

import sys
from typing import Any, Final
from urllib.parse import unquote_to_bytes

from kamisama_server.http.head import PERCENT, RequestHead
from kamisama_server.version import SERVER_SOFTWARE

Environ = dict[str, Any]

# Header names are attacker-chosen: bound the cache so it cannot grow without end.
_KEY_CACHE_MAX: Final = 512

_SPECIAL_KEYS: Final = {b"content-type": "CONTENT_TYPE", b"content-length": "CONTENT_LENGTH"}


def header_key(name: bytes) -> str | None:
    """The environ key for a lower-cased header name, or None to drop the header.

    A name containing ``_`` is dropped: ``X_Forwarded_For`` and ``X-Forwarded-For``
    would both become ``HTTP_X_FORWARDED_FOR``, letting a client smuggle a value
    past a proxy that only filters the dashed spelling (gunicorn and uvicorn drop
    them too).
    """
    if b"_" in name:
        return None
    special = _SPECIAL_KEYS.get(name)
    if special is not None:
        return special
    return "HTTP_" + name.decode("latin-1").upper().replace("-", "_")


def decode_path(raw_path: bytes) -> str:
    """Percent-decode the path into a PEP 3333 "native string" (bytes as latin-1)."""
    if PERCENT in raw_path:  # an int: see head.PERCENT
        raw_path = unquote_to_bytes(raw_path)
    return raw_path.decode("latin-1")


def split_root(path: str, script_name: str) -> str:
    """PATH_INFO for ``path`` under ``SCRIPT_NAME``.

    A proxy may forward the full path (``/api/users``) or strip the mount
    point (``/users``); both yield ``PATH_INFO == "/users"`` when ``SCRIPT_NAME``
    is ``/api``. The prefix only matches at a segment boundary (``/apiary``
    stays as it is).
    """
    if script_name and path.startswith(script_name):
        rest = path[len(script_name) :]
        if not rest or rest[0] == "/":
            return rest
    return path


class EnvironBuilder:
    """Makes one environ per request; holds what is the same for all of them."""

    __slots__ = ("_base", "_keys", "_root_path", "_script_name")

    def __init__(self, *, multithread: bool, file_wrapper: Any) -> None:
        self._base: Environ = {
            "wsgi.version": (1, 0),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": multithread,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "wsgi.file_wrapper": file_wrapper,
            "SCRIPT_NAME": "",
            "SERVER_SOFTWARE": SERVER_SOFTWARE,
        }
        self._keys: dict[bytes, str | None] = {}
        self._root_path = ""
        self._script_name = ""

    def _script_name_for(self, root_path: str) -> str:
        # root_path comes from config: the same str every time, so cache its conversion.
        if root_path is not self._root_path:
            self._root_path = root_path
            self._script_name = root_path.rstrip("/").encode("utf-8").decode("latin-1")
        return self._script_name

    def build(self, head: RequestHead, wsgi_input: Any) -> Environ:
        """The environ for ``head``; ``wsgi_input`` becomes ``wsgi.input``."""
        env = self._base.copy()
        env["REQUEST_METHOD"] = head.method
        path = decode_path(head.raw_path)
        if head.root_path:
            script_name = self._script_name_for(head.root_path)
            env["SCRIPT_NAME"] = script_name
            path = split_root(path, script_name)
        env["PATH_INFO"] = path
        env["QUERY_STRING"] = head.query_string.decode("latin-1")
        env["SERVER_PROTOCOL"] = "HTTP/1.1" if head.http_version == "1.1" else "HTTP/1.0"
        env["wsgi.url_scheme"] = head.scheme
        env["wsgi.input"] = wsgi_input

        keys = self._keys
        for name, value in head.headers:
            try:
                key = keys[name]
            except KeyError:
                key = header_key(name)
                if len(keys) < _KEY_CACHE_MAX:
                    keys[name] = key
            if key is None:
                continue
            text = value.decode("latin-1")
            if key in env:
                # Several lines of one header are one comma-separated list (RFC 9110
                # 5.3), except Cookie, whose pairs are separated by "; " (RFC 9113 8.2.3).
                # "," without a space, as gunicorn, granian, hypercorn and wsgiref join.
                sep = "; " if key == "HTTP_COOKIE" else ","
                env[key] = env[key] + sep + text
            else:
                env[key] = text

        server = head.server
        if server is not None:
            env["SERVER_NAME"] = server[0]
            env["SERVER_PORT"] = str(server[1])
        else:
            # A Unix socket: the best name we have is the one the client used.
            _server_from_host(env, head.scheme)
        client = head.client
        if client is not None:
            env["REMOTE_ADDR"] = client[0]
            env["REMOTE_PORT"] = str(client[1])
        return env


def _server_from_host(env: Environ, scheme: str) -> None:
    default_port = "443" if scheme == "https" else "80"
    host = env.get("HTTP_HOST", "")
    if not host:
        env["SERVER_NAME"] = "localhost"
        env["SERVER_PORT"] = default_port
        return
    # "[::1]:8000", "example.com:8000", "example.com"
    bracket = host.rfind("]")
    colon = host.rfind(":")
    if colon > bracket:
        env["SERVER_NAME"] = host[:colon]
        env["SERVER_PORT"] = host[colon + 1 :] or default_port
    else:
        env["SERVER_NAME"] = host
        env["SERVER_PORT"] = default_port
