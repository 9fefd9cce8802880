"""The library's own lines (``kamisama()`` without the server) go through ``logging``.

With nothing configured they still reach stderr, with time and level; a user
who configures logging (root or the ``kamisama`` logger) gets them there,
restyled and once, and the library never configures root itself.
"""

from __future__ import annotations

import re
import signal

from processes import wait_until
from test_library_promises import PRELUDE

RUN_TWO = """
def run(id):
    while True:
        time.sleep(1)

sys.exit(kamisama(workers=2, run=run))
"""


def test_unconfigured_lines_reach_stderr_with_time_and_level(script):
    master = script(PRELUDE + RUN_TWO)
    master.wait_for_log("started", count=2)
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 0
    lines = master.err.splitlines()
    assert lines, master.err
    stamp = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (INFO|WARNING) \[kamisama\] "
    assert all(re.match(stamp, line) for line in lines), master.err
    assert len(re.findall(r"INFO \[kamisama\] worker \d \(pid \d+\) started", master.err)) == 2


def test_a_user_root_config_gets_the_lines_once_in_its_format(script):
    master = script(
        PRELUDE
        + """
import logging
logging.basicConfig(level=logging.INFO, format="USER %(name)s %(levelname)s %(message)s")
"""
        + RUN_TWO
    )
    wait_until(lambda: master.err.count("started") >= 2, 10, "two started lines")
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 0
    started = [line for line in master.err.splitlines() if line.endswith("started")]
    assert len(started) == 2, master.err
    assert all(line.startswith("USER kamisama.master INFO worker ") for line in started)
    assert "[kamisama]" not in master.err  # our default handler stayed out of the way


def test_a_level_on_the_kamisama_logger_silences_them(script):
    master = script(
        PRELUDE
        + """
import logging
logging.getLogger("kamisama").setLevel(logging.ERROR)

def run(id):
    print(f"pid {id} {os.getpid()}")
    while True:
        time.sleep(1)

sys.exit(kamisama(workers=2, run=run))
"""
    )
    wait_until(lambda: len(master.worker_pids()) == 2, 10, "2 workers")
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 0
    assert master.err == ""
