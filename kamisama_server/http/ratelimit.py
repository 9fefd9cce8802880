"""Repeated log lines from one cause, rate-limited: one line, then a count.

An attack makes the same line over and over (a 408 per slow client, an accept
error every 0.5 s while out of descriptors, a traceback per dropped upload): the
logs would amplify it. :class:`RepeatFilter` lets the first record of a cause
through, drops the others for ``window`` seconds, and tells how many it dropped
on the first line of that cause after the window:
``... (and 57 more like it in the last 10 s)``.

A cause is the logger's message template and level (not its arguments: the
client's address differs each time) and, for a record with a traceback, the
exception's type and where it was raised, so two different failures are not
taken for one. The count shows on the cause's next line; a flood that stops
leaves its last count untold.

The filter is attached to the logger objects themselves (:func:`limit_repeats`),
so it stays whatever handlers or parents they are given.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

WINDOW = 10.0  # seconds during which a cause's repeats are counted, not logged
_MAX_CAUSES = 1024  # causes remembered at once; the oldest are forgotten past this


class RepeatFilter(logging.Filter):
    """Pass one record per cause per ``window`` seconds; count the rest."""

    def __init__(self, window: float = WINDOW, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window = window
        self._clock = clock
        # cause -> [when its window began, records dropped since]
        self._causes: dict[Hashable, list[float]] = {}

    def forget(self) -> None:
        """Start over, as if nothing had been logged (tests: each starts with a clean slate)."""
        self._causes.clear()

    def filter(self, record: logging.LogRecord) -> bool:
        cause = _cause(record)
        now = self._clock()
        seen = self._causes.get(cause)
        if seen is not None and now - seen[0] < self.window:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            # The template stays a template: the count goes in as literal text.
            # No "%" in the note: the message stays a valid template for its arguments.
            record.msg = (
                f"{record.msg} (and {int(seen[1])} more like it in the last {self.window:g} s)"
            )
        causes = self._causes
        causes.pop(cause, None)
        causes[cause] = [now, 0]
        if len(causes) > _MAX_CAUSES:
            del causes[next(iter(causes))]
        return True


def _cause(record: logging.LogRecord) -> Hashable:
    """What makes two records "the same line": template and level, and where an error came from."""
    exc_info = record.exc_info
    if not exc_info or exc_info[1] is None:
        return (record.levelno, record.msg)
    exc = exc_info[1]
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = (tb.tb_frame.f_code.co_filename, tb.tb_lineno) if tb is not None else None
    return (record.levelno, record.msg, type(exc), where)


def limit_repeats(logger: logging.Logger, window: float = WINDOW) -> RepeatFilter:
    """``logger``'s ``RepeatFilter``, attached now if it has none; tests may tune ``window``."""
    for existing in logger.filters:
        if isinstance(existing, RepeatFilter):
            return existing
    repeat = RepeatFilter(window)
    logger.addFilter(repeat)
    return repeat
