"""``wsgi.file_wrapper``: lets the server send a file with ``os.sendfile``.

An app returns ``environ["wsgi.file_wrapper"](f)``; when ``f`` is a regular
file with a descriptor, the adapter recognises the wrapper and hands the
descriptor to the engine (``Exchange.sendfile``) instead of iterating it.
Anything else (a BytesIO, a socket) is iterated in ``block_size`` pieces.
"""

from __future__ import annotations

import os
import stat
from typing import Any, BinaryIO


class FileWrapper:
    """The iterable PEP 3333 asks for; also a marker the adapter looks for."""

    __slots__ = ("block_size", "filelike")

    def __init__(self, filelike: BinaryIO | Any, block_size: int = 8192) -> None:
        self.filelike = filelike
        self.block_size = block_size

    def __iter__(self) -> FileWrapper:
        return self

    def __next__(self) -> bytes:
        data: bytes = self.filelike.read(self.block_size)
        if data:
            return data
        raise StopIteration

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()

    def sendfile_span(self) -> tuple[int, int, int] | None:
        """(fd, offset, bytes left) if this wraps a regular file, else None.

        The offset is the file's current position: an app may have seeked to
        serve a range.
        """
        fileno = getattr(self.filelike, "fileno", None)
        tell = getattr(self.filelike, "tell", None)
        if fileno is None or tell is None:
            return None
        try:
            fd = fileno()
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            offset = tell()
        except (OSError, ValueError):
            # io.UnsupportedOperation (no descriptor) is both.
            return None
        if not isinstance(fd, int) or not isinstance(offset, int):
            return None
        return fd, offset, max(0, st.st_size - offset)
