"""kamisama_server.sockets: real binds on 127.0.0.1 / ::1 and unix paths."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kamisama_server.sockets import (
    BindError,
    BindSpec,
    Listeners,
    bind_listeners,
    default_socket_mode,
    display_url,
    parse_bind,
    systemd_listen_fds,
)

HAS_REUSEPORT = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")
needs_reuseport = pytest.mark.skipif(not HAS_REUSEPORT, reason="SO_REUSEPORT balancing is Linux")


def _ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
def listeners_made() -> Iterator[list[Listeners]]:
    """Close every Listeners a test made, even when it fails."""
    made: list[Listeners] = []
    yield made
    for listeners in made:
        listeners.close()


def _accept_one(sock: socket.socket, timeout: float = 5.0) -> socket.socket:
    """Accept one connection on a non-blocking listener, within a deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn, _ = sock.accept()
            return conn
        except BlockingIOError:
            time.sleep(0.01)
    raise AssertionError(f"no connection accepted on {sock.getsockname()} within {timeout}s")


def _roundtrip(listener: socket.socket, address: object, family: int = socket.AF_INET) -> None:
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect(address)
        conn = _accept_one(listener)
        with conn:
            conn.setblocking(True)
            conn.sendall(b"hi")
            assert client.recv(2) == b"hi"


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8000", BindSpec("tcp", "127.0.0.1:8000", host="127.0.0.1", port=8000)),
        ("localhost:0", BindSpec("tcp", "localhost:0", host="localhost", port=0)),
        ("0.0.0.0:65535", BindSpec("tcp", "0.0.0.0:65535", host="0.0.0.0", port=65535)),
        ("[::1]:8080", BindSpec("tcp", "[::1]:8080", host="::1", port=8080)),
        ("[::]:80", BindSpec("tcp", "[::]:80", host="::", port=80)),
        ("unix:/tmp/a.sock", BindSpec("unix", "unix:/tmp/a.sock", path="/tmp/a.sock")),
        ("unix:rel.sock", BindSpec("unix", "unix:rel.sock", path="rel.sock")),
        ("unix:@abstract", BindSpec("unix", "unix:@abstract", path="\0abstract")),
        ("fd://3", BindSpec("fd", "fd://3", fd=3)),
        ("  127.0.0.1:1  ", BindSpec("tcp", "127.0.0.1:1", host="127.0.0.1", port=1)),
    ],
)
def test_parse_bind_accepts_every_documented_form(text: str, expected: BindSpec) -> None:
    assert parse_bind(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty bind address"),
        ("127.0.0.1", "expected HOST:PORT"),
        (":8000", "expected HOST:PORT"),
        ("127.0.0.1:http", "port must be a number from 0 to 65535"),
        ("127.0.0.1:65536", "port must be a number from 0 to 65535"),
        ("127.0.0.1:-1", "port must be a number from 0 to 65535"),
        ("::1:8000", "IPv6 address needs brackets"),
        ("[::1]8000", "expected [IPv6]:PORT"),
        ("[::1:8000", "expected [IPv6]:PORT"),
        ("[nothost]:80", "is not an IPv6 address"),
        ("unix:", "unix socket path is empty"),
        ("fd://", "expected fd://N"),
        ("fd://three", "expected fd://N"),
        ("http://127.0.0.1:80", "unknown scheme"),
    ],
)
def test_parse_bind_rejects_bad_specs_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_bind(text)


def test_default_socket_mode_is_shared_as_measured() -> None:
    assert default_socket_mode() == "shared"


# --------------------------------------------------------------------------- TCP


@pytest.mark.parametrize("mode", ["shared", pytest.param("reuseport", marks=needs_reuseport)])
def test_port_0_binds_a_free_port_and_reports_it(
    mode: str, listeners_made: list[Listeners]
) -> None:
    listeners = bind_listeners(["127.0.0.1:0"], slots=1, mode=mode)  # type: ignore[arg-type]
    listeners_made.append(listeners)
    (sock,) = listeners.sockets_for(1)
    port = sock.getsockname()[1]
    assert port != 0
    assert display_url(sock) == f"http://127.0.0.1:{port}"
    assert listeners.urls() == [f"http://127.0.0.1:{port}"]
    assert listeners.urls("https") == [f"https://127.0.0.1:{port}"]
    assert sock.getblocking() is False
    assert sock.get_inheritable() is True
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
    _roundtrip(sock, ("127.0.0.1", port))


@pytest.mark.skipif(not _ipv6_available(), reason="no IPv6 loopback here")
def test_ipv6_loopback_binds_and_displays_with_brackets(listeners_made: list[Listeners]) -> None:
    listeners = bind_listeners(["[::1]:0"], mode="shared")
    listeners_made.append(listeners)
    (sock,) = listeners.sockets_for(1)
    assert sock.family == socket.AF_INET6
    port = sock.getsockname()[1]
    assert display_url(sock) == f"http://[::1]:{port}"
    _roundtrip(sock, ("::1", port), socket.AF_INET6)


def test_backlog_is_applied(listeners_made: list[Listeners]) -> None:
    # The kernel does not report the backlog; a backlog of 1 with no accept
    # still takes at least one connection, which proves listen() was called.
    listeners = bind_listeners(["127.0.0.1:0"], mode="shared", backlog=1)
    listeners_made.append(listeners)
    assert listeners.backlog == 1
    (sock,) = listeners.sockets_for(1)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1


@pytest.mark.parametrize("mode", ["shared", pytest.param("reuseport", marks=needs_reuseport)])
def test_a_port_in_use_is_a_bind_error_naming_address_and_reason(mode: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(BindError) as info:
            bind_listeners(["127.0.0.1:0", f"127.0.0.1:{port}"], slots=2, mode=mode)  # type: ignore[arg-type]
    assert str(info.value) == f"127.0.0.1:{port}: address already in use"
    assert info.value.address == f"127.0.0.1:{port}"
    assert info.value.reason == "address already in use"


@needs_reuseport
def test_reuseport_mode_refuses_a_port_another_reuseport_server_holds() -> None:
    """Another reuseport listener of the same user must not silently share our port."""
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(BindError, match="address already in use"):
            bind_listeners([f"127.0.0.1:{port}"], slots=2, mode="reuseport")


def test_unresolvable_host_is_a_bind_error() -> None:
    with pytest.raises(BindError, match=r"^no-such-host\.invalid:80: cannot resolve host"):
        bind_listeners(["no-such-host.invalid:80"], mode="shared")


def _connect_until_each_accepts(socks: list[socket.socket], port: int) -> None:
    """Open connections until every socket has accepted one (the kernel hashes
    each connection to one reuseport socket); bounded in count and time."""
    pending = set(range(len(socks)))
    clients: list[socket.socket] = []
    deadline = time.monotonic() + 10
    try:
        for _ in range(500):
            if not pending or time.monotonic() > deadline:
                break
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            # loopback: the handshake is done, so the connection is queued on
            # exactly one of the sockets already
            for i, s in enumerate(socks):
                with contextlib.suppress(BlockingIOError):
                    s.accept()[0].close()
                    pending.discard(i)
    finally:
        for c in clients:
            c.close()
    assert not pending, f"slot sockets {sorted(pending)} never got a connection"


@needs_reuseport
def test_reuseport_gives_one_socket_per_slot_on_one_port_and_each_accepts(
    listeners_made: list[Listeners],
) -> None:
    listeners = bind_listeners(["127.0.0.1:0"], slots=3, mode="reuseport")
    listeners_made.append(listeners)
    socks = [listeners.sockets_for(slot)[0] for slot in (1, 2, 3)]
    assert len({s.fileno() for s in socks}) == 3
    ports = {s.getsockname()[1] for s in socks}
    assert len(ports) == 1
    assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in socks)
    assert listeners.urls() == [f"http://127.0.0.1:{ports.pop()}"]
    _connect_until_each_accepts(socks, socks[0].getsockname()[1])


@needs_reuseport
def test_add_slot_binds_one_more_socket_on_the_same_port(
    listeners_made: list[Listeners],
) -> None:
    listeners = bind_listeners(["127.0.0.1:0"], slots=1, mode="reuseport")
    listeners_made.append(listeners)
    first = listeners.sockets_for(1)[0]
    port = first.getsockname()[1]
    added = listeners.add_slot(2)
    assert len(added) == 1 and added[0].getsockname()[1] == port
    assert listeners.add_slot(2) == added  # idempotent
    _connect_until_each_accepts([first, added[0]], port)


def test_shared_mode_gives_every_slot_the_same_socket(listeners_made: list[Listeners]) -> None:
    listeners = bind_listeners(["127.0.0.1:0", "127.0.0.1:0"], slots=3, mode="shared")
    listeners_made.append(listeners)
    assert listeners.sockets_for(1) == listeners.sockets_for(3)
    assert len(listeners.sockets_for(1)) == 2
    assert listeners.add_slot(4) == listeners.sockets_for(1)


@needs_reuseport
def test_reuseport_mode_still_shares_unix_sockets(
    tmp_path: Path, listeners_made: list[Listeners]
) -> None:
    path = tmp_path / "s.sock"
    listeners = bind_listeners(["127.0.0.1:0", f"unix:{path}"], slots=2, mode="reuseport")
    listeners_made.append(listeners)
    one, two = listeners.sockets_for(1), listeners.sockets_for(2)
    assert len(one) == len(two) == 2
    assert one[0] is not two[0]  # own TCP socket each
    assert one[1] is two[1]  # the one unix socket


def test_bad_mode_and_slots_are_value_errors() -> None:
    with pytest.raises(ValueError, match="socket mode must be one of reuseport, shared"):
        bind_listeners(["127.0.0.1:0"], mode="both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="slots must be at least 1"):
        bind_listeners(["127.0.0.1:0"], slots=0)


def test_nothing_to_bind_is_a_bind_error() -> None:
    with pytest.raises(BindError, match="nothing to listen on"):
        bind_listeners([], environ={})


# --------------------------------------------------------------------------- unix


def test_unix_socket_serves_and_its_file_is_removed_on_close(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    listeners = bind_listeners([f"unix:{path}"])
    (sock,) = listeners.sockets_for(1)
    assert display_url(sock) == f"unix:{path}"
    assert path.is_socket()
    _roundtrip(sock, str(path), socket.AF_UNIX)
    listeners.close()
    assert not path.exists()
    listeners.close()  # twice is fine


def test_unix_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()  # a server that died: the file stays, nobody listens
    assert path.is_socket()
    listeners = bind_listeners([f"unix:{path}"])
    try:
        _roundtrip(listeners.sockets_for(1)[0], str(path), socket.AF_UNIX)
    finally:
        listeners.close()


def test_unix_socket_someone_listens_on_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen()
        with pytest.raises(BindError, match=f"^unix:{path}: address already in use$"):
            bind_listeners([f"unix:{path}"])
        assert path.is_socket()  # untouched


def test_unix_path_that_is_a_regular_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("precious")
    with pytest.raises(BindError, match="exists and is not a socket"):
        bind_listeners([f"unix:{path}"])
    assert path.read_text() == "precious"


def test_unix_file_is_not_removed_by_a_forked_worker(tmp_path: Path) -> None:
    path = tmp_path / "fork.sock"
    listeners = bind_listeners([f"unix:{path}"])
    try:
        pid = os.fork()
        if pid == 0:  # the worker: closes its copies, must leave the file
            try:
                listeners.close()
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert path.is_socket()
        _roundtrip(listeners.sockets_for(1)[0], str(path), socket.AF_UNIX)
    finally:
        listeners.close()
    assert not path.exists()


def test_unix_file_replaced_by_someone_else_is_not_removed(tmp_path: Path) -> None:
    path = tmp_path / "mine.sock"
    listeners = bind_listeners([f"unix:{path}"])
    os.unlink(path)
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(path))  # a new server took the path
        listeners.close()
        assert path.is_socket()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux")
def test_unix_abstract_socket(listeners_made: list[Listeners]) -> None:
    name = f"kamisama-test-{os.getpid()}-{time.monotonic_ns()}"
    listeners = bind_listeners([f"unix:@{name}"])
    listeners_made.append(listeners)
    sock = listeners.sockets_for(1)[0]
    assert display_url(sock) == f"unix:@{name}"
    _roundtrip(sock, "\0" + name, socket.AF_UNIX)


# --------------------------------------------------------------------------- fd:// and systemd


def test_fd_adopts_a_listening_socket_handed_in() -> None:
    handed = socket.socket()
    handed.bind(("127.0.0.1", 0))
    handed.listen()
    port = handed.getsockname()[1]
    fd = handed.detach()
    listeners = bind_listeners([f"fd://{fd}"], slots=2, mode="reuseport")
    try:
        (sock,) = listeners.sockets_for(1)
        assert sock.fileno() == fd
        assert listeners.sockets_for(2) == [sock]  # always shared
        assert sock.getblocking() is False
        assert display_url(sock) == f"http://127.0.0.1:{port}"
        _roundtrip(sock, ("127.0.0.1", port))
    finally:
        listeners.close()


def test_fd_of_a_bound_but_not_listening_socket_gets_listen() -> None:
    handed = socket.socket()
    handed.bind(("127.0.0.1", 0))
    port = handed.getsockname()[1]
    listeners = bind_listeners([f"fd://{handed.detach()}"])
    try:
        _roundtrip(listeners.sockets_for(1)[0], ("127.0.0.1", port))
    finally:
        listeners.close()


def test_fd_that_is_not_open_is_a_bind_error() -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)  # a number that is surely closed now
    with pytest.raises(BindError, match=f"^fd://{fd}: bad file descriptor"):
        bind_listeners([f"fd://{fd}"])


def test_fd_that_is_not_a_socket_is_a_bind_error_and_stays_open() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(BindError, match=f"^fd://{r}: "):
            bind_listeners([f"fd://{r}"])
        os.fstat(r)  # still open: not ours to close
    finally:
        os.close(r)
        os.close(w)


def test_fd_of_a_datagram_socket_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        with pytest.raises(BindError, match="not a stream socket"):
            bind_listeners([f"fd://{udp.fileno()}"])
        assert udp.fileno() != -1


def test_systemd_fds_are_only_for_the_pid_named() -> None:
    me = str(os.getpid())
    assert systemd_listen_fds({"LISTEN_PID": me, "LISTEN_FDS": "2"}) == [3, 4]
    assert systemd_listen_fds({"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "2"}) == []
    assert systemd_listen_fds({"LISTEN_FDS": "2"}) == []
    assert systemd_listen_fds({}) == []
    with pytest.raises(BindError, match="LISTEN_FDS: not a number"):
        systemd_listen_fds({"LISTEN_PID": me, "LISTEN_FDS": "x"})


SYSTEMD_CHILD = textwrap.dedent(
    """
    import fcntl, os, socket, sys
    from kamisama_server.sockets import bind_listeners
    # What systemd does between fork and exec: the sockets at fd 3.., our pid.
    # move the handed fds out of the way of 3, 4, ... first
    handed = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 100) for fd in sys.argv[1:]]
    for fd in sys.argv[1:]:
        os.close(int(fd))
    for i, fd in enumerate(handed):
        os.dup2(fd, 3 + i)
        os.close(fd)
    os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(sys.argv) - 1))
    listeners = bind_listeners([], slots=2, mode="reuseport")
    assert "LISTEN_FDS" not in os.environ and "LISTEN_PID" not in os.environ
    socks = listeners.sockets_for(2)
    print(" ".join(str(s.fileno()) for s in socks), flush=True)
    print(" ".join(listeners.urls()), flush=True)
    for s in socks:
        s.setblocking(True)
        conn, _ = s.accept()
        conn.sendall(b"ok")
        conn.close()
    """
)


def test_systemd_socket_activation_adopts_fds_from_3(tmp_path: Path) -> None:
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    port = tcp.getsockname()[1]
    path = tmp_path / "sd.sock"
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(path))
    unix.listen()
    fds = [tcp.fileno(), unix.fileno()]
    child = subprocess.Popen(
        [sys.executable, "-c", SYSTEMD_CHILD, *map(str, fds)],
        pass_fds=fds,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        tcp.close()
        unix.close()
        assert child.stdout is not None
        assert child.stdout.readline().split() == ["3", "4"]
        assert child.stdout.readline().split() == [f"http://127.0.0.1:{port}", f"unix:{path}"]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            assert c.recv(2) == b"ok"
        with socket.socket(socket.AF_UNIX) as c:
            c.settimeout(5)
            c.connect(str(path))
            assert c.recv(2) == b"ok"
        assert child.wait(timeout=10) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)


def test_systemd_fds_are_left_alone_when_the_pid_is_not_ours() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}
    listeners = bind_listeners(["127.0.0.1:0"], mode="shared", environ=env)
    try:
        assert len(listeners.all()) == 1
        assert env == {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}
    finally:
        listeners.close()


@pytest.mark.parametrize("mode", ["shared", pytest.param("reuseport", marks=needs_reuseport)])
def test_a_failed_bind_leaves_nothing_bound(mode: str, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    path = tmp_path / "partial.sock"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        specs = [f"127.0.0.1:{free}", f"unix:{path}", f"127.0.0.1:{busy.getsockname()[1]}"]
        with pytest.raises(BindError, match="address already in use"):
            bind_listeners(specs, slots=2, mode=mode)  # type: ignore[arg-type]
    assert not path.exists()
    with socket.socket() as again:  # would fail if any socket on it were still open
        again.bind(("127.0.0.1", free))
        again.listen()


def test_relative_unix_path_is_removed_even_after_a_chdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    listeners = bind_listeners(["unix:rel.sock"])
    try:
        assert (tmp_path / "run" / "rel.sock").is_socket()
        monkeypatch.chdir(tmp_path / "elsewhere")
    finally:
        listeners.close()
    assert not (tmp_path / "run" / "rel.sock").exists()
