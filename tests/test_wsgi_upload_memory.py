"""A 200 MB upload read in chunks leaves the server's memory where it was.

The server runs in its own process so its peak resident size (``VmHWM``) is
its own; the client streams the body from one reused buffer.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

SERVER = textwrap.dedent(
    """
    import sys, time
    from kamisama_server.http.background import BackgroundServer
    from kamisama_server.http.config import HttpConfig
    from kamisama_server.http.wsgi import WSGIAdapter

    def app(environ, start_response):
        stream = environ["wsgi.input"]
        total = 0
        while True:
            piece = stream.read(65536)
            if not piece:
                break
            total += len(piece)
        body = str(total).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    with BackgroundServer(WSGIAdapter(app, threads=int(sys.argv[1])), HttpConfig()) as srv:
        print(srv.port, flush=True)
        sys.stdin.read()  # until the test closes our stdin
    """
)

MB = 1024 * 1024


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def body(total: int) -> Iterator[bytes]:
    chunk = b"u" * MB
    for _ in range(total // MB):
        yield chunk


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_200mb_upload_keeps_memory_flat(tmp_path: Path, chunked: bool) -> None:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    proc = subprocess.Popen(
        [sys.executable, str(script), "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        url = f"http://127.0.0.1:{port}/"
        with httpx.Client(timeout=60) as client:
            # Warm up (thread pool, imports) before taking the baseline.
            assert client.post(url, content=b"x" * 200_000).text == "200000"
            baseline = status_kb(proc.pid, "VmRSS")
            total = 200 * MB
            headers = {} if chunked else {"Content-Length": str(total)}
            start = time.monotonic()
            r = client.post(url, content=body(total), headers=headers)
            assert r.text == str(total)
            assert time.monotonic() - start < 60
        peak = status_kb(proc.pid, "VmHWM")
        # The body passed through in pieces of at most a few hundred KB.
        assert peak - baseline < 40 * 1024, (baseline, peak)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
