"""A down slot's SO_REUSEPORT queue is covered by its siblings until it is back.

The kernel hashes connections to every socket of the group, whether or not a
worker accepts on it. While a slot's worker is down or slow to come back, its
siblings accept on that slot's socket too (``on_sibling`` from the library).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from processes import wait_until
from serve_support import PID_APP, StartServer, serving

SLOW_COMEBACK = """
import os, time

def run(wid):
    # The first life starts at once; a respawned worker 1 takes 4 s to be ready.
    marker = os.path.join(os.path.dirname(__file__), f"lived-{wid}")
    if os.path.exists(marker) and wid == 1:
        time.sleep(4)
    open(marker, "w").close()
"""


@pytest.fixture
def serve(tmp_path: Path):
    yield from serving(tmp_path)


def test_connections_hashed_to_a_down_slot_are_served_by_its_sibling(serve: StartServer) -> None:
    server = serve(
        [
            "app:app",
            "-w",
            "2",
            "-b",
            "127.0.0.1:0",
            "--socket-mode",
            "reuseport",
            "--run",
            "hooks:run",
            "--no-access-log",
        ],
        modules={"app": PID_APP, "hooks": SLOW_COMEBACK},
    )
    server.wait_listening()
    first = server.started()
    os.kill(first[1], signal.SIGKILL)
    server.wait_for_log("respawning in")
    worst = 0.0
    answered_by: set[str] = set()
    for _ in range(24):  # fresh connections: about half are hashed to slot 1
        began = time.monotonic()
        answered_by.add(server.get("/", timeout=2.0).text.split()[1])
        worst = max(worst, time.monotonic() - began)
    assert answered_by == {"2"}, "slot 1 was still coming back: only worker 2 can answer"
    assert worst < 1.0, f"a connection waited {worst:.2f}s for the down slot"
    # Once worker 1 is ready again it takes its own queue back.
    wait_until(lambda: "1" in server.get("/").text.split()[1:], timeout=15, what="worker 1")
    assert server.stop() == 0, server.output()
