"""The ``LoadBoard`` figures the share rule reads (kamisama_server/http/balance.py).

In one process: seats of the same board stand for the workers (the board is
plain shared memory; the end-to-end balance tests fork real workers).
"""

from __future__ import annotations

import time

from kamisama_server.http.balance import FULL_FOR, LoadBoard


def test_a_full_worker_that_keeps_answering_still_counts_in_the_share() -> None:
    board = LoadBoard(slots=2)
    mine, sibling = board.claim(1), board.claim(2)
    assert mine is not None and sibling is not None
    mine.publish(connections=10, accepting=True, full=False)
    sibling.publish(connections=10, accepting=True, full=True, finished=100)
    time.sleep(FULL_FOR * 2)
    # Busy since before FULL_FOR and nothing answered since: its app blocks, it is absent.
    sibling.publish(connections=10, accepting=True, full=True, finished=100)
    assert mine.within_share(20, 1)  # alone: no share to keep
    # One request answered since: busy, not blocked; it counts again.
    sibling.publish(connections=10, accepting=True, full=True, finished=101)
    assert not mine.within_share(20, 1)  # 20 is over the mean of 20 and 10, plus 1
