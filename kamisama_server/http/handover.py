"""Keep-alive connections handed from a blocked worker to one with a free app thread.

A WSGI worker runs ``--threads`` app calls at once. When its app blocks (every
thread busy, and no request finished for ``balance.FULL_FOR``), the next request
of each of its keep-alive connections used to queue behind it while a sibling
sat idle: a slow request held up every client whose connection happened to be
on the same worker (a load balancer's pool, say). Instead the blocked worker
passes such a connection on, with the bytes it already read, over a datagram
socket every worker shares (``SCM_RIGHTS``); a worker with a free thread takes
it as it would accept a new one. While the message waits, the kernel holds the
connection: a worker killed meanwhile loses nothing of it.

A worker that keeps finishing requests (any worker under steady load) keeps its
connections, so the balance of connections and the fast path stay as they are.

The socket pair is made in the master before any fork (as the ``LoadBoard``
is), and the master keeps both ends open, so what is queued outlives any worker.
The kernel bounds the queue (``net.unix.max_dgram_qlen``); a connection that
does not fit stays with its worker.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Final

MAX_PASSED: Final = 65536
"""Bytes read ahead that may ride along; a connection with more stays where it is."""

# Received descriptors are closed in any program the app may exec (as accepted ones are).
_RECV_FLAGS: Final = socket.MSG_DONTWAIT | getattr(socket, "MSG_CMSG_CLOEXEC", 0)


class Handover:
    """One queue of handed-over connections, shared by every worker of a server."""

    def __init__(self) -> None:
        self._out, self._in = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        # Each datagram carries one connection: a bigger buffer queues more of them.
        with contextlib.suppress(OSError):
            self._out.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MAX_PASSED)

    def fileno(self) -> int:
        """What to watch for a connection to take."""
        return self._in.fileno()

    def pass_on(self, fd: int, data: bytes) -> bool:
        """Queue the connection ``fd`` with the bytes read from it so far; False if it
        cannot be queued now (the caller keeps serving it), else the caller closes its
        ``fd`` (the queue holds the connection)."""
        if len(data) > MAX_PASSED:
            return False
        try:
            socket.send_fds(self._out, [data], [fd], socket.MSG_DONTWAIT)
        except OSError:  # the queue is full (EAGAIN) or too many descriptors in flight
            return False
        return True

    def take(self) -> tuple[socket.socket, bytes] | None:
        """A queued connection and its bytes read ahead, or None if none is queued."""
        try:
            data, fds, flags, _ = socket.recv_fds(self._in, MAX_PASSED, 4, _RECV_FLAGS)
        except (BlockingIOError, InterruptedError):
            return None
        conns = [socket.socket(fileno=fd) for fd in fds]
        if len(conns) != 1 or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            for conn in conns:  # never sent by us: drop it whole
                conn.close()
            return None
        conn = conns[0]
        conn.setblocking(False)
        return conn, data

    def close(self) -> None:
        self._out.close()
        self._in.close()
