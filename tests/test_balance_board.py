"""The ``LoadBoard`` figures the share rule reads (kamisama_server/http/balance.py).

In one process: seats of the same board stand for the workers (the board is
plain shared memory; the end-to-end balance tests fork real workers).
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest
from processes import wait_until

from kamisama_server.http.balance import FULL_FOR, LoadBoard, accept_queue_length, queue_reader


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


def test_what_the_kernel_still_queues_counts_in_the_share() -> None:
    """A burst 64 deep: each worker may take its part of it in one look, not 2-3 at a time."""
    board = LoadBoard(slots=2)
    mine, sibling = board.claim(1), board.claim(2)
    assert mine is not None and sibling is not None
    sibling.publish(connections=0, accepting=True, full=False)
    # Without the queue a worker may lead its sibling by the slack only.
    assert mine.within_share(2, 1) and not mine.within_share(3, 1)
    # With 64 queued, its part is 32, and like any take it may go the slack over it
    # (it takes one more while it holds no more than part + slack); each take moves
    # one from the queue to what it holds.
    taken = 0
    while taken < 64 and mine.within_share(taken, 1, queued=64 - taken):
        taken += 1
    assert taken == 34
    mine.publish(connections=taken, accepting=True, full=False)
    # The sibling, holding nothing yet, may take all the rest.
    left = 64 - taken
    assert all(sibling.within_share(held, 1, queued=left - held) for held in range(left))


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="TCP_INFO's queue length is Linux's"
)
def test_the_accept_queue_of_a_listening_socket_is_read() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        assert queue_reader(listener)
        clients = [socket.create_connection(listener.getsockname()) for _ in range(5)]
        try:
            wait_until(lambda: accept_queue_length(listener) == 5, 5, "5 connections queued")
            listener.accept()[0].close()
            assert accept_queue_length(listener) == 4
        finally:
            for client in clients:
                client.close()


def test_a_socket_whose_queue_cannot_be_read_is_known_as_such(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / "s"))
        listener.listen(4)
        assert not queue_reader(listener)


def test_a_full_worker_keeps_its_part_of_a_queued_burst() -> None:
    """Full a moment (a new connection whose request has not come): its part stays queued."""
    board = LoadBoard(slots=3)
    mine, taking, full = board.claim(1), board.claim(2), board.claim(3)
    assert mine is not None and taking is not None and full is not None
    taking.publish(connections=0, accepting=True, full=False)
    full.publish(connections=0, accepting=True, full=True)
    time.sleep(FULL_FOR * 2)
    full.publish(connections=0, accepting=True, full=True)  # full since before FULL_FOR
    taken = 0
    while taken < 60 and mine.within_share(taken, 1, queued=60 - taken):
        taken += 1
    # Its part of 60 among three, plus the slack (and one more, as any take): the full
    # one's part is left to it, though by the mean rule it takes nothing now.
    assert taken == 22
