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
    ready()

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


def test_a_long_lived_worker_resets_its_slots_backoff(script, tmp_path):
    master = script(
        PRELUDE
        + f"""
import kamisama_server.supervisor as supervisor
supervisor.STABLE_AFTER = 1.0  # shortened so the test need not wait 5 s

def run(id):
    lives = os.path.join({str(tmp_path)!r}, "lives")
    with open(lives, "a") as f:
        f.write("x")
    count = len(open(lives).read())
    print(f"pid {{id}} {{os.getpid()}}")
    if count <= 3:
        sys.exit(1)   # three quick crashes: 0.1, 0.2, 0.4
    if count == 4:
        time.sleep(1.3)  # a long life
        sys.exit(1)   # then a crash that starts the backoff again

sys.exit(kamisama(workers=1, run=run))
"""
    )
    master.wait_for_log("respawning in", count=4)
    delays = re.findall(r"respawning in (\S+)s", master.err)
    assert delays[:4] == ["0.1", "0.2", "0.4", "0.1"]
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
