"""Bind specs -> listening sockets, done once in the master before any fork.

Why here and only here: a failed bind, port 0 and privileged ports are handled
in one place, and a respawned worker inherits the very same socket, so the
connections queued on it survive a worker's death.

Two modes (see DESIGN.md):

* ``reuseport``: each TCP bind spec gets one ``SO_REUSEPORT`` socket per worker
  slot; the kernel spreads connections over them. The master keeps them all, so
  a respawned worker inherits its slot's queue. Closing one resets the
  connections still queued on it (Linux), so a slot's sockets are never
  closed while the server runs (SIGTTOU leaves them to the siblings).
* ``shared``: one socket per bind spec, accepted on by every worker.

Unix sockets, ``fd://N`` and systemd's sockets are always shared: they cannot
be duplicated with ``SO_REUSEPORT``.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import stat
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Literal

SocketMode = Literal["reuseport", "shared"]
SOCKET_MODES: tuple[SocketMode, ...] = ("reuseport", "shared")
DEFAULT_BACKLOG = 2048
SD_LISTEN_FDS_START = 3  # systemd hands sockets in from fd 3 on (sd_listen_fds(3))


class BindError(Exception):
    """A listening socket could not be made; the CLI exits 4 with ``str(self)``.

    The message always reads ``"<address>: <reason>"``, e.g.
    ``"127.0.0.1:8000: address already in use"``.
    """

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"{address}: {reason}")
        self.address = address
        self.reason = reason


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class BindSpec:
    """One parsed ``--bind`` value. ``text`` is what the user wrote (for messages)."""

    kind: Literal["tcp", "unix", "fd"]
    text: str
    host: str = ""
    port: int = 0
    path: str = ""  # unix: filesystem path, or "\0name" for a Linux abstract socket
    fd: int = -1


def parse_bind(text: str) -> BindSpec:
    """Parse ``HOST:PORT``, ``[IPv6]:PORT``, ``unix:/path`` or ``fd://N``.

    Raises ``ValueError`` with a message that says what form was expected.
    """
    spec = text.strip()
    if not spec:
        raise ValueError("empty bind address; expected HOST:PORT, [IPv6]:PORT, unix:PATH or fd://N")
    if spec.startswith("unix:"):
        path = spec[len("unix:") :]
        if not path:
            raise ValueError(f"{text!r}: unix socket path is empty; expected unix:/path/to.sock")
        if "\0" in path:
            raise ValueError(f"{text!r}: unix socket path contains a NUL byte")
        if path.startswith("@"):  # Linux abstract namespace, no file on disk
            path = "\0" + path[1:]
        return BindSpec(kind="unix", text=spec, path=path)
    if spec.startswith("fd://"):
        raw = spec[len("fd://") :]
        if not raw.isdigit():
            raise ValueError(f"{text!r}: expected fd://N with N a file descriptor number")
        return BindSpec(kind="fd", text=spec, fd=int(raw))
    if "://" in spec:
        raise ValueError(
            f"{text!r}: unknown scheme; expected HOST:PORT, [IPv6]:PORT, unix:PATH or fd://N"
        )
    host, port = _split_host_port(text, spec)
    return BindSpec(kind="tcp", text=spec, host=host, port=port)


def _split_host_port(text: str, spec: str) -> tuple[str, int]:
    if spec.startswith("["):
        end = spec.find("]")
        if end < 0 or not spec[end + 1 :].startswith(":"):
            raise ValueError(f"{text!r}: expected [IPv6]:PORT, e.g. [::1]:8000")
        host, raw_port = spec[1:end], spec[end + 2 :]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, raw_port = spec.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:8000")
        if ":" in host:
            raise ValueError(f"{text!r}: an IPv6 address needs brackets, e.g. [::1]:8000")
    if not raw_port.isdigit() or not 0 <= int(raw_port) <= 65535:
        raise ValueError(f"{text!r}: port must be a number from 0 to 65535")
    return host, int(raw_port)


def format_host_port(host: str, port: int) -> str:
    """The bind spec for a host and port (brackets an IPv6 host)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def default_socket_mode() -> SocketMode:
    """The mode used when the user does not choose; the one place to change it.

    ``shared``, everywhere, by measurement (kamisama_server/http/PERFORMANCE.md):
    on Linux both modes cost the same per request (15.3 vs 15.6 us keep-alive,
    fresh connections a little cheaper shared) and kept two workers within 10%
    of each other; but with ``reuseport`` a connection hashed to a worker busy in
    a slow request waits for it, while on a shared socket any idle worker takes
    it. (On macOS ``SO_REUSEPORT`` does not balance at all.)
    """
    return "shared"


def systemd_listen_fds(environ: Mapping[str, str] | None = None) -> list[int]:
    """The fds systemd socket activation handed to *this* process (empty if none).

    ``LISTEN_PID`` must name our pid: the variables are inherited by children
    that must not adopt the sockets.
    """
    env = os.environ if environ is None else environ
    pid, count = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    if not pid or not count:
        return []
    if not pid.isdigit() or int(pid) != os.getpid():
        return []
    if not count.isdigit():
        raise BindError("LISTEN_FDS", f"not a number: {count!r}")
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)))


# --------------------------------------------------------------------------- listeners


@dataclass
class Listener:
    """One listening socket, the spec it came from and the slot it belongs to.

    ``slot`` is ``None`` for a socket shared by all workers.
    """

    sock: socket.socket
    spec: BindSpec
    slot: int | None = None


@dataclass
class _UnixFile:
    path: str
    dev: int
    ino: int


@dataclass
class Listeners:
    """Every socket the master bound, and which ones worker slot N accepts on.

    Created by :func:`bind_listeners`; lives in the master for the server's
    lifetime and is inherited by every forked worker.
    """

    mode: SocketMode
    backlog: int
    shared: list[Listener] = field(default_factory=list)
    per_slot: dict[int, list[Listener]] = field(default_factory=dict)
    _reuseport_specs: list[BindSpec] = field(default_factory=list)
    _unix_files: list[_UnixFile] = field(default_factory=list)
    _owner_pid: int = field(default_factory=os.getpid)

    def sockets_for(self, slot: int) -> list[socket.socket]:
        """The sockets worker ``slot`` accepts on: its own, then the shared ones."""
        own = [listener.sock for listener in self.per_slot.get(slot, [])]
        return own + [listener.sock for listener in self.shared]

    def add_slot(self, slot: int) -> list[socket.socket]:
        """Bind one more slot's ``SO_REUSEPORT`` sockets (a worker added by SIGTTIN).

        A no-op in shared mode or for a slot that already has its sockets.
        Returns what :meth:`sockets_for` returns for the slot.
        """
        if slot in self.per_slot or not self._reuseport_specs:
            return self.sockets_for(slot)
        made: list[Listener] = []
        try:
            for spec in self._reuseport_specs:
                made.append(Listener(_bind_tcp(spec, self.backlog, reuseport=True), spec, slot))
        except BaseException:
            for listener in made:
                listener.sock.close()
            raise
        self.per_slot[slot] = made
        return self.sockets_for(slot)

    def all(self) -> list[Listener]:
        """Every listener, slot sockets first in slot order, then the shared ones."""
        out = [lst for slot in sorted(self.per_slot) for lst in self.per_slot[slot]]
        return out + self.shared

    def urls(self, scheme: str = "http") -> list[str]:
        """One display URL per bind (slot sockets of one spec share an address)."""
        seen: list[str] = []
        for listener in self.all():
            url = display_url(listener.sock, scheme)
            if url not in seen:
                seen.append(url)
        return seen

    def close(self) -> None:
        """Close every socket; in the master, also remove the unix socket files.

        Safe to call in a worker (it never removes files there) and more than
        once. A file is only removed if it is still the one we created.
        """
        for listener in self.all():
            listener.sock.close()
        self.per_slot.clear()
        self.shared.clear()
        if os.getpid() != self._owner_pid:
            return
        for unix_file in self._unix_files:
            with contextlib.suppress(OSError):
                st = os.stat(unix_file.path)
                if (st.st_dev, st.st_ino) == (unix_file.dev, unix_file.ino):
                    os.unlink(unix_file.path)
        self._unix_files.clear()


def bind_listeners(
    specs: Iterable[str | BindSpec],
    *,
    slots: int = 1,
    mode: SocketMode | None = None,
    backlog: int = DEFAULT_BACKLOG,
    environ: MutableMapping[str, str] | None = None,
    adopt_systemd: bool = True,
    unix_mode: int | None = None,
) -> Listeners:
    """Bind every spec (plus systemd's sockets, if handed to us) for ``slots`` workers.

    ``unix_mode``: permission bits of each ``unix:`` socket file (else the umask's).

    Raises :class:`BindError` (nothing stays bound then) or ``ValueError`` for a
    bad spec. Systemd's ``LISTEN_*`` variables are removed from ``environ``
    (default ``os.environ``) once adopted, so no child process adopts them again.
    """
    chosen: SocketMode = default_socket_mode() if mode is None else mode
    if chosen not in SOCKET_MODES:
        raise ValueError(f"socket mode must be one of {', '.join(SOCKET_MODES)}, not {chosen!r}")
    if slots < 1:
        raise ValueError(f"slots must be at least 1, not {slots}")
    parsed = [parse_bind(s) if isinstance(s, str) else s for s in specs]
    listeners = Listeners(mode=chosen, backlog=backlog)
    try:
        for spec in parsed:
            _bind_one(listeners, spec, slots, unix_mode)
        if adopt_systemd:
            env = os.environ if environ is None else environ
            fds = systemd_listen_fds(env)
            for fd in fds:
                spec = BindSpec(kind="fd", text=f"systemd fd {fd}", fd=fd)
                listeners.shared.append(Listener(_adopt_fd(spec, backlog), spec))
            if fds:
                for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                    env.pop(name, None)
    except BaseException:
        listeners.close()
        raise
    if not listeners.all():
        raise BindError("(no address)", "nothing to listen on: no bind and no systemd sockets")
    return listeners


def _bind_one(
    listeners: Listeners, spec: BindSpec, slots: int, unix_mode: int | None = None
) -> None:
    backlog = listeners.backlog
    if spec.kind == "unix":
        sock, unix_file = _bind_unix(spec, backlog, unix_mode)
        listeners.shared.append(Listener(sock, spec))
        if unix_file is not None:
            listeners._unix_files.append(unix_file)
    elif spec.kind == "fd":
        listeners.shared.append(Listener(_adopt_fd(spec, backlog), spec))
    elif listeners.mode == "shared":
        listeners.shared.append(Listener(_bind_tcp(spec, backlog, reuseport=False), spec))
    else:
        # The first socket binds WITHOUT SO_REUSEPORT, so a port someone already
        # listens on (even another reuseport server of the same user) is an error,
        # not a silent split of the traffic. Then it joins the reuseport group and
        # the other slots bind to the very port it got (port 0 included).
        first = _bind_tcp(spec, backlog, reuseport=False, reuseport_after_bind=True)
        host, port = first.getsockname()[:2]
        real = BindSpec(kind="tcp", text=spec.text, host=host, port=port)
        listeners.per_slot.setdefault(1, []).append(Listener(first, real, 1))
        listeners._reuseport_specs.append(real)
        for slot in range(2, slots + 1):
            sock = _bind_tcp(real, backlog, reuseport=True)
            listeners.per_slot.setdefault(slot, []).append(Listener(sock, real, slot))


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available on this machine"
    if exc.errno is not None and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return str(exc)


def _finish(sock: socket.socket) -> socket.socket:
    """Make a bound socket ready for the pre-fork workers' event loops."""
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


def _bind_tcp(
    spec: BindSpec, backlog: int, *, reuseport: bool, reuseport_after_bind: bool = False
) -> socket.socket:
    address = format_host_port(spec.host, spec.port)
    try:
        infos = socket.getaddrinfo(
            spec.host, spec.port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise BindError(address, f"cannot resolve host: {exc.strerror}") from None
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
        if reuseport_after_bind:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise BindError(address, _reason(exc)) from None
    return _finish(sock)


def _bind_unix(
    spec: BindSpec, backlog: int, mode: int | None = None
) -> tuple[socket.socket, _UnixFile | None]:
    address = spec.text
    abstract = spec.path.startswith("\0")
    if not abstract:
        _remove_stale_unix_file(address, spec.path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(spec.path)
        if mode is not None and not abstract:
            os.chmod(spec.path, mode)  # before listen: nobody connects with the umask's bits
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise BindError(address, _reason(exc)) from None
    if abstract:
        return _finish(sock), None
    st = os.stat(spec.path)
    # absolute: the app may chdir before the master removes the file at exit
    return _finish(sock), _UnixFile(os.path.abspath(spec.path), st.st_dev, st.st_ino)


def _remove_stale_unix_file(address: str, path: str) -> None:
    """Remove a unix socket file left by a dead server; refuse anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise BindError(address, _reason(exc)) from None
    if not stat.S_ISSOCK(st.st_mode):
        raise BindError(address, "path exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # nobody listens: a stale file from a server that died
    except (BlockingIOError, TimeoutError):
        # a full backlog: someone listens but is busy
        raise BindError(address, "address already in use") from None
    except OSError as exc:
        raise BindError(address, _reason(exc)) from None
    else:
        raise BindError(address, "address already in use")
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise BindError(address, f"cannot remove stale socket file: {_reason(exc)}") from None


def _adopt_fd(spec: BindSpec, backlog: int) -> socket.socket:
    """Take over a listening socket handed in by a parent (fd://N, systemd)."""
    address = spec.text
    try:
        sock = socket.socket(fileno=spec.fd)
    except OSError as exc:
        raise BindError(address, _reason(exc)) from None
    try:
        if sock.type != socket.SOCK_STREAM:
            raise BindError(address, "not a stream socket")
        listening = 1
        if hasattr(socket, "SO_ACCEPTCONN"):
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if not listening:
            sock.listen(backlog)
    except OSError as exc:
        sock.detach()  # not ours to close when we refuse it
        raise BindError(address, _reason(exc)) from None
    except BindError:
        sock.detach()
        raise
    return _finish(sock)


def display_url(sock: socket.socket, scheme: str = "http") -> str:
    """The address for the "listening on ..." line: ``http://127.0.0.1:8000``,
    ``http://[::1]:8000`` or ``unix:/path/to.sock``."""
    if sock.family == socket.AF_UNIX:
        name = sock.getsockname()
        if isinstance(name, bytes):
            name = name.decode(errors="replace")
        return "unix:@" + name[1:] if name.startswith("\0") else f"unix:{name}"
    host, port = sock.getsockname()[:2]
    return f"{scheme}://{format_host_port(host, port)}"
