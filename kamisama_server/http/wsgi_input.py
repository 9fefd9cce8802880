"""``wsgi.input``: the request body, pulled from the engine as the app reads it.

The stream holds at most one received chunk beyond what the app asked for, so
a 200 MB upload read in pieces never sits in memory. ``pull`` is a blocking
call (the app runs in a thread) that returns the next chunk, ``b""`` at the
end, or raises ``RequestBodyError``/``ClientDisconnected`` (both ``OSError``).
A body that was fully received before the app started (small bodies) is given
as ``initial`` with ``pull=None``: its reads never leave the app's thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

Pull = Callable[[], bytes]


class InputStream:
    """A read-only binary file over the request body (PEP 3333 ``wsgi.input``)."""

    __slots__ = ("_buf", "_error", "_pos", "_pull", "body_error")

    def __init__(
        self,
        pull: Pull | None,
        initial: bytes = b"",
        error: BaseException | None = None,
    ) -> None:
        self._pull = pull
        self._buf = initial
        self._pos = 0
        # An error met while pre-reading, raised once the data before it is consumed.
        self._error = error
        # The OSError a read raised, if any: the adapter answers 400/413 for it.
        self.body_error: BaseException | None = None

    @property
    def complete(self) -> bool:
        """The whole body is here: reads never wait for the client."""
        return self._pull is None

    def _next(self) -> bytes:
        """The next chunk from the engine, b"" at the end of the body."""
        if self._error is not None:
            self.body_error = self._error
            raise self._error
        pull = self._pull
        if pull is None:
            return b""
        try:
            chunk = pull()
        except BaseException as exc:
            self._error = exc
            self.body_error = exc
            raise
        if not chunk:
            self._pull = None
        return chunk

    def forget_error(self) -> None:
        """The call is over: drop the read error, whose traceback's frames refer to us."""
        self._error = self.body_error = None

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes, fewer only at the end of the body; all if ``size < 0``."""
        if size is None or size < 0:
            return self._read_all()
        buf, pos = self._buf, self._pos
        end = pos + size
        if end <= len(buf):
            self._pos = end
            return buf if pos == 0 and end == len(buf) else buf[pos:end]
        parts = [buf[pos:]] if pos < len(buf) else []
        need = end - len(buf)
        self._buf, self._pos = b"", 0
        while need > 0:
            chunk = self._next()
            if not chunk:
                break
            if len(chunk) > need:
                parts.append(chunk[:need])
                self._buf, self._pos = chunk, need
                break
            parts.append(chunk)
            need -= len(chunk)
        return b"".join(parts)

    def _read_all(self) -> bytes:
        buf, pos = self._buf, self._pos
        parts = [buf[pos:] if pos else buf] if pos < len(buf) else []
        self._buf, self._pos = b"", 0
        while True:
            chunk = self._next()
            if not chunk:
                break
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readline(self, size: int | None = -1) -> bytes:
        """One line including its ``\\n`` (at most ``size`` bytes if ``size >= 0``)."""
        limit = -1 if size is None else size
        if limit == 0:
            return b""
        parts: list[bytes] = []
        got = 0
        while True:
            buf, pos = self._buf, self._pos
            if pos >= len(buf):
                chunk = self._next()
                if not chunk:
                    break
                buf, pos = chunk, 0
                self._buf, self._pos = buf, pos
            stop = len(buf) if limit < 0 else min(len(buf), pos + limit - got)
            nl = buf.find(b"\n", pos, stop)
            if nl >= 0:
                stop = nl + 1
            parts.append(buf[pos:stop])
            got += stop - pos
            self._pos = stop
            if nl >= 0 or got == limit:
                break
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        """The remaining lines; stops once ``hint`` bytes were read, if ``hint > 0``."""
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def close(self) -> None:
        """Nothing to release: the engine owns the connection (apps may call it anyway)."""
