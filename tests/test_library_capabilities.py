"""Beyond the seed: readiness, fail-fast, before_fork, scaling and rolling restart.

These are the supervisor capabilities the server stands on; any library user
gets them too.
"""

from __future__ import annotations

import os
import re
import signal
import time

from processes import pid_alive, wait_until
from test_library_promises import PIDS_AND_HOOKS, PRELUDE, hooks


def test_on_ready_runs_once_in_the_master_after_every_manual_ready(script):
    master = script(
        PRELUDE
        + """
from kamisama_server import ready

def run(id):
    print(f"pid {id} {os.getpid()}")
    time.sleep(0.2 * id)
    print(f"ready {id}")
    ready()
    ready()  # idempotent

def announce():
    print(f"all ready in master {worker_id()}")

sys.exit(kamisama(workers=3, run=run, manual_ready=True, on_ready=announce))
"""
    )
    master.wait_for_output("all ready in master None")
    lines = master.lines()
    announced = lines.index("all ready in master None")
    assert {f"ready {i}" for i in (1, 2, 3)} <= set(lines[:announced])
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 0
    assert master.out.count("all ready") == 1


def test_fail_fast_stops_when_a_worker_dies_before_it_is_ready(script):
    master = script(
        PRELUDE
        + """
def run(id):
    print(f"pid {id} {os.getpid()}")
    if id == 2:
        raise SystemExit(9)
    while True:
        time.sleep(1)

def shutdown(id, signal):
    print(f"hook {id} {signal}")

sys.exit(kamisama(workers=2, run=run, shutdown=shutdown, manual_ready=True, fail_fast=True))
"""
    )
    assert master.wait() == 3
    assert re.search(r"worker 2 \(pid \d+\) exited with code 9 before it became ready", master.err)
    assert "respawning" not in master.err
    assert hooks(master.out) == [(1, "SIGTERM")]


def test_without_fail_fast_the_library_keeps_trying(script):
    master = script(
        PRELUDE
        + """
def run(id):
    raise SystemExit(9)

sys.exit(kamisama(workers=1, run=run, manual_ready=True))
"""
    )
    master.wait_for_log("respawning in", count=3)
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 0


def test_before_fork_runs_in_the_master_for_each_worker(script):
    master = script(
        PRELUDE
        + """
master_pid = os.getpid()

def before_fork(id):
    print(f"before fork {id} in master {os.getpid() == master_pid}")

def run(id):
    print(f"pid {id} {os.getpid()}")

sys.exit(kamisama(workers=2, run=run, before_fork=before_fork))
"""
    )
    wait_until(lambda: len(master.worker_pids()) == 2, what="2 workers")
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 0
    assert sorted(line for line in master.lines() if line.startswith("before")) == [
        "before fork 1 in master True",
        "before fork 2 in master True",
    ]


def test_sigttin_adds_a_worker_and_sigttou_retires_the_highest_id(script):
    master = script(
        PIDS_AND_HOOKS
        + """

sys.exit(kamisama(workers=2, run=run, shutdown=shutdown))
"""
    )
    wait_until(lambda: len(master.worker_pids()) == 2, what="2 workers")
    master.signal_master(signal.SIGTTIN)
    wait_until(lambda: 3 in master.worker_pids(), what="worker 3")
    master.signal_master(signal.SIGTTOU)
    master.wait_for_output("hook 3 SIGTTOU")
    master.wait_for_log(") shut down")
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 0
    assert sorted(hooks(master.out)) == [(1, "SIGTERM"), (2, "SIGTERM"), (3, "SIGTTOU")]


def test_sigusr1_replaces_every_worker_one_at_a_time_keeping_ids(script):
    # manual_ready: a worker is ready once it printed its pid. (By default a worker
    # is ready just before run is called, so its print raced the old worker's hook:
    # the order of the two lines in the output proved nothing either way.)
    master = script(
        PRELUDE
        + """
from kamisama_server import ready

def run(id):
    print(f"pid {id} {os.getpid()}")
    ready()  # after the line is out: "ready" before it would race the old worker's hook

def shutdown(id, signal):
    print(f"hook {id} {signal} {os.getpid()}")

sys.exit(kamisama(workers=2, run=run, shutdown=shutdown, manual_ready=True))
"""
    )
    first = wait_until(lambda: len(master.worker_pids()) == 2 and master.worker_pids())
    master.signal_master(signal.SIGUSR1)
    master.wait_for_log("rolling restart done")
    master.wait_for_output("SIGUSR1", count=2)
    second = master.worker_pids()
    assert set(second) == {1, 2}
    assert not set(second.values()) & set(first.values())
    retired = re.findall(r"^hook (\d) SIGUSR1 (\d+)$", master.out, re.M)
    assert sorted(retired) == sorted((str(w), str(p)) for w, p in first.items())
    # Each old worker is retired only after its replacement started.
    out = master.out
    for wid in (1, 2):
        assert out.index(f"pid {wid} {second[wid]}") < out.index(f"hook {wid} SIGUSR1")
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 0


def test_a_healthy_worker_ends_its_slots_backoff_and_is_replaced_at_once(script, tmp_path):
    master = script(
        PRELUDE
        + f"""
def run(id):
    lives = os.path.join({str(tmp_path)!r}, "lives")
    with open(lives, "a") as f:
        f.write("x")
    count = len(open(lives).read())
    print(f"pid {{id}} {{os.getpid()}}")
    if count <= 3:
        sys.exit(1)   # three start-up crashes: 0.1, 0.2, 0.4
    if count == 4:
        time.sleep(0.5)  # healthy for a while
        sys.exit(1)   # then a crash: replaced at once

sys.exit(kamisama(workers=1, run=run))
"""
    )
    master.wait_for_log("respawning in", count=4)
    delays = re.findall(r"respawning in (\S+)s", master.err)
    assert delays[:4] == ["0.1", "0.2", "0.4", "0.0"]
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 0


def test_siblings_hear_a_slot_go_down_and_come_back_up(script):
    master = script(
        PRELUDE
        + """
def run(id):
    print(f"pid {id} {os.getpid()}")

async def on_sibling(id, state, fds):
    print(f"worker {worker_id()} hears {id} {state}")

sys.exit(kamisama(workers=3, run=run, on_sibling=on_sibling))
"""
    )
    first = wait_until(lambda: len(master.worker_pids()) == 3 and master.worker_pids())
    os.kill(first[2], signal.SIGKILL)
    master.wait_for_output("hears 2 up", count=2)
    out = master.out
    for wid in (1, 3):
        assert out.index(f"worker {wid} hears 2 down") < out.index(f"worker {wid} hears 2 up")
    assert "worker 2 hears" not in out
    # SIGTTOU: the removed slot is down for good (its siblings cover it) ...
    master.signal_master(signal.SIGTTOU)
    master.wait_for_output("hears 3 down", count=2)
    assert "worker 3 hears 3" not in master.out
    # ... until SIGTTIN brings a worker 3 back.
    master.signal_master(signal.SIGTTIN)
    master.wait_for_output("hears 3 up", count=2)
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 0


def test_a_worker_started_while_a_sibling_is_down_hears_of_it(script):
    master = script(
        PRELUDE
        + """
def run(id):
    print(f"pid {id} {os.getpid()}")
    if id == 2:
        sys.exit(1)  # slot 2 stays down, backing off

def on_sibling(id, state, fds):
    print(f"worker {worker_id()} pid {os.getpid()} hears {id} {state}")

sys.exit(kamisama(workers=2, run=run, on_sibling=on_sibling))
"""
    )
    first = wait_until(lambda: master.worker_pids().get(1))
    master.wait_for_output("hears 2 down")
    os.kill(first, signal.SIGKILL)  # worker 1's successor must learn slot 2 is down
    wait_until(lambda: master.worker_pids()[1] != first, what="worker 1 respawned")
    second = master.worker_pids()[1]
    master.wait_for_output(f"worker 1 pid {second} hears 2 down")
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 0


def test_the_master_lends_descriptors_with_a_down_notice(script):
    master = script(
        PRELUDE
        + """
lent_r, lent_w = os.pipe()
os.write(lent_w, b"lent by the master")

def run(id):
    print(f"pid {id} {os.getpid()}")

def lend_fds(id):
    return [lent_r]

def on_sibling(id, state, fds):
    if fds:
        print(f"worker {worker_id()} got {os.read(fds[0], 64).decode()} for {id}")
        os.close(fds[0])

sys.exit(kamisama(workers=2, run=run, on_sibling=on_sibling, lend_fds=lend_fds))
"""
    )
    first = wait_until(lambda: len(master.worker_pids()) == 2 and master.worker_pids())
    os.kill(first[2], signal.SIGKILL)
    master.wait_for_output("worker 1 got lent by the master for 2")
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 0


def test_a_worker_whose_loop_stops_beating_is_dumped_and_replaced(script):
    """``heartbeat_timeout``: a CPU-bound async run is noticed, its stack logged, replaced."""
    master = script(
        PRELUDE
        + """
async def run(id):
    print(f"pid {id} {os.getpid()}")
    await asyncio.sleep(0.5)
    if id == 1 and not os.path.exists("stuck"):  # only the first worker of slot 1
        open("stuck", "w").close()
        spin_without_yielding(60.0)
    while True:
        await asyncio.sleep(1)

def spin_without_yielding(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass

def shutdown(id, signal):
    print(f"hook {id} {signal}")

sys.exit(kamisama(workers=2, run=run, shutdown=shutdown, timeout=1.0, heartbeat_timeout=1.0))
"""
    )
    first = wait_until(lambda: master.worker_pids().get(1), 10, "worker 1")
    master.wait_for_log(f"worker 1 (pid {first}): no heartbeat for", timeout=10)
    master.wait_for_log("spin_without_yielding", timeout=10)  # faulthandler's dump
    master.wait_for_log(f"worker 1 (pid {first}) is replaced: its event loop is stuck")
    wait_until(lambda: master.worker_pids()[1] != first, 10, "a successor for slot 1")
    master.wait_for_log(f"worker 1 (pid {first}) killed: its event loop is stuck", timeout=10)
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 0, master.output
    assert master.err.count("worker 2 (pid") == 2, master.err  # started, shut down: untouched


def test_request_replacement_starts_a_successor_then_drains_the_worker(script):
    master = script(
        PRELUDE
        + """
from kamisama_server import request_replacement

replaced = False

def run(id):
    print(f"pid {id} {os.getpid()}")
    if id == 2 and not os.path.exists("asked"):
        open("asked", "w").close()
        request_replacement("it asked")
        request_replacement("it asked twice")  # one successor all the same

def shutdown(id, signal):
    print(f"hook {id} {signal} {os.getpid()}")

sys.exit(kamisama(workers=2, run=run, shutdown=shutdown))
"""
    )
    master.wait_for_log("is replaced: it asked")
    first = int(re.search(r"worker 2 \(pid (\d+)\) is replaced: it asked", master.err)[1])
    master.wait_for_output(f"hook 2 SIGUSR1 {first}")
    second = master.worker_pids()[2]
    assert second != first
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 0, master.output
    assert master.err.count("is replaced") == 1, master.err
    assert f"hook 2 SIGTERM {second}" in master.out


def test_setup_runs_in_each_worker_before_run_with_no_event_loop(script):
    master = script(
        PRELUDE
        + """
def setup(id):
    try:
        asyncio.get_running_loop()
        loop = "running"
    except RuntimeError:
        loop = "none"
    print(f"setup {id} {os.getpid()} loop={loop} master={worker_id()}")

async def run(id):
    print(f"run {id} {os.getpid()}")

sys.exit(kamisama(workers=2, setup=setup, run=run))
"""
    )
    master.wait_for_output("run 2", timeout=10)
    master.wait_for_output("run 1", timeout=10)
    lines = master.lines()
    for wid in (1, 2):
        (setup_line,) = [line for line in lines if line.startswith(f"setup {wid} ")]
        _, _, pid, loop, where = setup_line.split()
        assert (loop, where) == ("loop=none", f"master={wid}")
        assert lines.index(setup_line) < lines.index(f"run {wid} {pid}")
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 0


def test_restart_from_another_thread_replaces_every_worker_with_the_given_signal_name(script):
    master = script(
        PIDS_AND_HOOKS
        + """
import threading
from kamisama_server.options import resolve_options
from kamisama_server.supervisor import Supervisor

def ready():
    threading.Thread(target=supervisor.restart, args=("a file changed", "SIGUSR2")).start()

def phase(name):
    print(f"restart {name}")

options = resolve_options((), dict(workers=2, run=run, shutdown=shutdown, on_ready=ready,
                                   on_rolling_restart=phase))
supervisor = Supervisor(options)
sys.exit(supervisor.run())
"""
    )
    master.wait_for_output("restart done")
    master.wait_for_output("SIGUSR2", count=2)  # the last retired worker drains after "done"
    assert sorted(hooks(master.out)) == [(1, "SIGUSR2"), (2, "SIGUSR2")]
    assert master.lines().index("restart begin") < master.lines().index("restart done")
    assert "a file changed: rolling restart of 2 worker(s)" in master.err
    assert len(master.worker_pids()) == 2
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 0
    assert sorted(hooks(master.out)) == [(w, s) for w in (1, 2) for s in ("SIGTERM", "SIGUSR2")]


PIDS_AND_PHASES = (
    PRELUDE
    + """
def run(id):
    print(f"pid {id} {os.getpid()}")

def phase(name):
    print(f"restart {name}")
"""
)
"""Workers that print ``pid ID PID``; ``phase`` prints ``restart begin|done``."""


def test_rolling_restart_says_done_only_once_every_predecessor_announced_its_drain(script):
    """With ``announces_draining``, "done" means the predecessors take no new work:
    the line comes after each one's ``draining()``, however late its hook calls it."""
    master = script(
        PIDS_AND_PHASES
        + """
from kamisama_server import draining

def shutdown(id, signal):
    time.sleep(0.5)  # a drain that takes a moment to stop taking work
    print(f"draining {os.getpid()}")
    draining()
    draining()  # idempotent

sys.exit(kamisama(workers=2, run=run, shutdown=shutdown, announces_draining=True,
                  on_rolling_restart=phase))
"""
    )
    first = wait_until(lambda: len(master.worker_pids()) == 2 and master.worker_pids())
    master.signal_master(signal.SIGUSR1)
    master.wait_for_output("restart done")
    lines = master.lines()
    done = lines.index("restart done")
    for pid in first.values():
        assert lines.index(f"draining {pid}") < done, master.out
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 0


def test_rolling_restart_without_announces_draining_is_done_when_predecessors_are_told(script):
    """A worker that never calls ``draining()`` does not hold "done" up."""
    master = script(
        PIDS_AND_PHASES
        + """
def shutdown(id, signal):
    time.sleep(1.0)
    print(f"stopped {os.getpid()}")

sys.exit(kamisama(workers=1, run=run, shutdown=shutdown, on_rolling_restart=phase))
"""
    )
    (first,) = wait_until(lambda: list(master.worker_pids().values()) or None)
    master.signal_master(signal.SIGUSR1)
    master.wait_for_output(f"stopped {first}")
    lines = master.lines()
    assert lines.index("restart done") < lines.index(f"stopped {first}"), master.out
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 0


def test_shutdown_delay_keeps_workers_running_then_shuts_down_once(script):
    master = script(
        PIDS_AND_HOOKS
        + """
sys.exit(kamisama(workers=2, run=run, shutdown=shutdown, shutdown_delay=1.0))
"""
    )
    pids = wait_until(lambda: len(master.worker_pids()) == 2 and master.worker_pids())
    sent = time.monotonic()
    master.signal_master(signal.SIGTERM)
    master.wait_for_log("still serving for 1.0s")
    master.signal_master(signal.SIGINT)  # a second signal does not cut the delay short
    master.wait_for_log("SIGINT received during the shutdown delay; ignored")
    assert all(pid_alive(pid) for pid in pids.values())
    assert "hook" not in master.out
    assert master.wait() == 0
    assert time.monotonic() - sent >= 1.0
    assert sorted(hooks(master.out)) == [(1, "SIGTERM"), (2, "SIGTERM")]
