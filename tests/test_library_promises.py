"""Every promise of the seed README (and of issue 2), with real forks and signals.

Each test runs a small master script in its own process group. Workers print
``pid ID PID`` when run starts and ``hook ID SIGNAL`` when the hook runs.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from processes import pid_alive, wait_until

PRELUDE = """
import asyncio, os, sys, time
from kamisama_server import kamisama, worker_id

def print(*words):
    # One write per line: several processes share this stdout file.
    sys.stdout.write(" ".join(map(str, words)) + "\\n")
    sys.stdout.flush()
"""

PIDS_AND_HOOKS = (
    PRELUDE
    + """
def run(id):
    print(f"pid {id} {os.getpid()}")

def shutdown(id, signal):
    print(f"hook {id} {signal}")
"""
)
"""Workers that print ``pid ID PID`` when they start and ``hook ID SIGNAL`` when they stop."""


def hooks(out: str) -> list[tuple[int, str]]:
    return [(int(m[1]), m[2]) for m in re.finditer(r"^hook (\d+) (\S+)$", out, re.M)]


def test_seed_console_example_three_workers_then_ctrl_c(script):
    master = script(
        PRELUDE
        + """
def run(id):
    print(f"running worker {id}")

async def shutdown(id, signal):
    print(f"worker {id} shutting down from {signal}")

sys.exit(kamisama({"workers": 3, "run": run, "shutdown": shutdown, "timeout": 5.0}))
"""
    )
    master.wait_for_output("running worker", 3)
    master.signal_group(signal.SIGINT)
    assert master.wait() == 0
    lines = master.lines()
    assert sorted(line for line in lines if line.startswith("running")) == [
        "running worker 1",
        "running worker 2",
        "running worker 3",
    ]
    assert sorted(line for line in lines if "shutting down" in line) == [
        "worker 1 shutting down from SIGINT",
        "worker 2 shutting down from SIGINT",
        "worker 3 shutting down from SIGINT",
    ]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGUSR2, signal.SIGINT])
def test_each_shutdown_signal_to_the_master_alone_calls_every_hook_with_its_name(script, sig):
    master = script(
        PIDS_AND_HOOKS
        + """

sys.exit(kamisama(run, workers=2, shutdown=shutdown))
"""
    )
    wait_until(lambda: len(master.worker_pids()) == 2, what="2 workers")
    master.signal_master(sig)
    assert master.wait() == 0
    assert sorted(hooks(master.out)) == [(1, sig.name), (2, sig.name)]


def test_duplicate_signals_never_call_a_hook_twice(script):
    master = script(
        PIDS_AND_HOOKS
        + """
    time.sleep(1.0)  # duplicates arrive while the hook still runs

sys.exit(kamisama(workers=3, run=run, shutdown=shutdown, timeout=8))
"""
    )
    wait_until(lambda: len(master.worker_pids()) == 3, what="3 workers")
    master.signal_group(signal.SIGINT)
    master.wait_for_output("hook ", 3)
    master.signal_master(signal.SIGTERM)
    master.signal_group(signal.SIGINT)
    assert master.wait() == 0
    assert sorted(hooks(master.out)) == [(1, "SIGINT"), (2, "SIGINT"), (3, "SIGINT")]
    assert "already shutting down; ignored" in master.err


def test_async_hooks_are_awaited_before_the_worker_exits(script, tmp_path):
    marker_dir = tmp_path / "markers"
    marker_dir.mkdir()
    master = script(
        PRELUDE
        + f"""
def run(id):
    print(f"pid {{id}} {{os.getpid()}}")

async def shutdown(id, signal):
    await asyncio.sleep(0.5)
    with open(os.path.join({str(marker_dir)!r}, str(id)), "w") as f:
        f.write(signal)

sys.exit(kamisama(workers=2, run=run, shutdown=shutdown))
"""
    )
    wait_until(lambda: len(master.worker_pids()) == 2, what="2 workers")
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 0
    assert {p.name: p.read_text() for p in marker_dir.iterdir()} == {
        "1": "SIGTERM",
        "2": "SIGTERM",
    }


def test_a_hook_slower_than_timeout_gets_its_worker_killed_and_named(script):
    master = script(
        PRELUDE
        + """
def run(id):
    print(f"pid {id} {os.getpid()}")

def shutdown(id, signal):
    if id == 2:
        time.sleep(60)

sys.exit(kamisama(workers=2, run=run, shutdown=shutdown, timeout=1.0))
"""
    )
    pids = wait_until(lambda: len(master.worker_pids()) == 2 and master.worker_pids())
    started = time.monotonic()
    master.signal_master(signal.SIGTERM)
    code = master.wait()
    elapsed = time.monotonic() - started
    assert code != 0
    assert 0.9 <= elapsed <= 2.0, elapsed
    assert f"worker 2 (pid {pids[2]}) killed after timeout 1.0s" in master.err
    assert "worker 1" not in master.err.split("killed after")[0].rsplit("\n", 1)[-1]
    assert not pid_alive(pids[2])


def test_a_hook_that_raises_is_logged_others_still_shut_down_and_status_is_nonzero(script):
    master = script(
        PRELUDE
        + """
def run(id):
    print(f"pid {id} {os.getpid()}")

def shutdown(id, signal):
    if id == 1:
        raise RuntimeError("hook of worker 1 failed")
    print(f"hook {id} {signal}")

sys.exit(kamisama(workers=3, run=run, shutdown=shutdown))
"""
    )
    wait_until(lambda: len(master.worker_pids()) == 3, what="3 workers")
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 1
    assert "RuntimeError: hook of worker 1 failed" in master.err
    assert "Traceback" in master.err
    assert sorted(hooks(master.out)) == [(2, "SIGTERM"), (3, "SIGTERM")]
    assert "worker 2 (pid" in master.err and master.err.count(") shut down") == 2


@pytest.mark.parametrize(
    "crash",
    ["raise RuntimeError('boom in run')", "os._exit(1)", "os.kill(os.getpid(), 9)"],
)
def test_a_crashed_worker_is_respawned_with_the_same_id(script, tmp_path, crash):
    master = script(
        PRELUDE
        + f"""
def run(id):
    print(f"pid {{id}} {{os.getpid()}}")
    first_life = os.path.join({str(tmp_path)!r}, f"lived-{{id}}")
    if id == 2 and not os.path.exists(first_life):
        open(first_life, "w").close()
        {crash}

def shutdown(id, signal):
    print(f"hook {{id}} {{signal}}")

sys.exit(kamisama(workers=2, run=run, shutdown=shutdown))
"""
    )
    master.wait_for_output("pid 2 ", 2)
    wait_until(lambda: "respawning in" in master.err, what="respawn log")
    assert re.search(r"worker 2 \(pid \d+\) (exited with code 1|was killed by SIGKILL)", master.err)
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 0
    assert sorted(hooks(master.out)) == [(1, "SIGTERM"), (2, "SIGTERM")]


def test_a_worker_killed_from_outside_is_respawned_with_the_same_id(script):
    master = script(
        PRELUDE
        + """
def run(id):
    print(f"pid {id} {os.getpid()}")
    while True:
        time.sleep(1)

sys.exit(kamisama(workers=2, run=run))
"""
    )
    first = wait_until(lambda: len(master.worker_pids()) == 2 and master.worker_pids())
    os.kill(first[1], signal.SIGKILL)
    wait_until(lambda: master.worker_pids()[1] != first[1], what="worker 1 respawned")
    assert f"worker 1 (pid {first[1]}) was killed by SIGKILL; respawning in" in master.err
    assert master.worker_pids()[2] == first[2]
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 0


def test_a_crash_during_shutdown_is_not_respawned_and_status_is_nonzero(script):
    master = script(
        PRELUDE
        + """
def run(id):
    print(f"pid {id} {os.getpid()}")

def shutdown(id, signal):
    if id == 2:
        os._exit(7)

sys.exit(kamisama(workers=2, run=run, shutdown=shutdown))
"""
    )
    wait_until(lambda: len(master.worker_pids()) == 2, what="2 workers")
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 1
    assert "exited with code 7 during shutdown; not respawned" in master.err
    assert master.out.count("pid 2 ") == 1


def test_a_crash_loop_backs_off_and_says_why(script):
    master = script(
        PRELUDE
        + """
def run(id):
    print(f"pid {id} {os.getpid()}")
    sys.exit(5)

sys.exit(kamisama(workers=1, run=run))
"""
    )
    master.wait_for_log("respawning in 0.8s", timeout=10)
    spawned_by_then = master.out.count("pid 1 ")
    assert re.findall(r"exited with code 5; respawning in (\S+)s", master.err)[:4] == [
        "0.1",
        "0.2",
        "0.4",
        "0.8",
    ]
    master.wait_for_log("respawning in 1.6s", timeout=5)
    # 1.5 s of the loop's life: it spawned once or twice more, not hundreds of times.
    assert master.out.count("pid 1 ") <= spawned_by_then + 2
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 0


def test_a_healthy_worker_that_crashes_is_respawned_at_once_until_it_crashes_repeatedly(script):
    master = script(
        PRELUDE
        + """
def run(id):
    print(f"pid {id} {os.getpid()}")
    if id == 1:
        time.sleep(0.3)  # healthy (ready over 0.1 s), then a crash
        sys.exit(4)
    while True:
        time.sleep(1)

sys.exit(kamisama(workers=2, run=run))
"""
    )
    master.wait_for_log("exited with code 4; respawning in", count=4, timeout=10)
    delays = re.findall(r"exited with code 4; respawning in (\S+)s", master.err)
    # Slot 2 runs: from slot 1's third crash within 10 s, slot 1 backs off.
    assert delays[:4] == ["0.0", "0.0", "0.1", "0.2"]
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 0


def test_a_healthy_worker_is_respawned_at_once_when_no_other_slot_runs(script):
    master = script(
        PRELUDE
        + """
def run(id):
    print(f"pid {id} {os.getpid()}")
    time.sleep(0.3)
    sys.exit(4)

sys.exit(kamisama(workers=1, run=run))
"""
    )
    master.wait_for_log("exited with code 4; respawning in", count=5, timeout=10)
    delays = re.findall(r"exited with code 4; respawning in (\S+)s", master.err)
    assert set(delays) == {"0.0"}, delays  # the only slot never backs off after it served
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 0


def test_master_killed_workers_notice_run_the_hook_with_sighup_and_exit(script, tmp_path):
    marker_dir = tmp_path / "markers"
    marker_dir.mkdir()
    master = script(
        PRELUDE
        + f"""
def run(id):
    print(f"pid {{id}} {{os.getpid()}}")
    while True:
        time.sleep(1)

def shutdown(id, signal):
    with open(os.path.join({str(marker_dir)!r}, f"{{id}}-{{time.time()}}"), "w") as f:
        f.write(signal)
    if id == 2:
        time.sleep(60)  # over the timeout: the orphan must enforce it on itself

sys.exit(kamisama(workers=2, run=run, shutdown=shutdown, timeout=1.5))
"""
    )
    pids = wait_until(lambda: len(master.worker_pids()) == 2 and master.worker_pids())
    killed_at = time.monotonic()
    master.signal_master(signal.SIGKILL)
    master.wait()
    wait_until(lambda: len(list(marker_dir.iterdir())) == 2, timeout=1.0, what="both hooks")
    wait_until(lambda: not pid_alive(pids[1]), timeout=1.0, what="worker 1 gone")
    wait_until(lambda: not pid_alive(pids[2]), timeout=4.0, what="worker 2 gone")
    assert time.monotonic() - killed_at >= 1.4  # it honoured the timeout before dying
    assert sorted(p.read_text() for p in marker_dir.iterdir()) == ["SIGHUP", "SIGHUP"]


@pytest.mark.parametrize(
    "body",
    [
        "def run(id):\n    print(f'pid {id} {os.getpid()}')\n"
        "    while True:\n        time.sleep(1)",
        "async def run(id):\n    print(f'pid {id} {os.getpid()}')\n"
        "    await asyncio.Event().wait()",
        "def run(id):\n    print(f'pid {id} {os.getpid()}')\n    while True:\n        pass",
    ],
    ids=["sync-blocking", "async-forever", "busy-loop"],
)
def test_run_that_never_returns_still_gets_its_hook_and_exits(script, body):
    master = script(
        PRELUDE
        + body
        + """

async def shutdown(id, signal):
    print(f"hook {id} {signal}")

sys.exit(kamisama(workers=2, run=run, shutdown=shutdown, timeout=5))
"""
    )
    wait_until(lambda: len(master.worker_pids()) == 2, what="2 workers")
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 0
    assert sorted(hooks(master.out)) == [(1, "SIGTERM"), (2, "SIGTERM")]


def test_async_run_is_awaited_on_the_workers_own_loop_and_hook_shares_it(script):
    master = script(
        PRELUDE
        + """
state = {}

async def run(id):
    state["loop"] = asyncio.get_running_loop()
    state["stopped"] = asyncio.Event()
    print(f"pid {id} {os.getpid()}")
    await state["stopped"].wait()

async def shutdown(id, signal):
    same = asyncio.get_running_loop() is state["loop"]
    state["stopped"].set()
    print(f"hook {id} same-loop={same}")

sys.exit(kamisama(workers=1, run=run, shutdown=shutdown))
"""
    )
    wait_until(lambda: master.worker_pids(), what="worker")
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 0
    assert "hook 1 same-loop=True" in master.out


def test_workers_do_not_rerun_the_callers_top_level_and_code_after_runs_once(script):
    master = script(
        PRELUDE
        + """
print("top level")

def run(id):
    print(f"pid {id} {os.getpid()} worker_id={worker_id()}")

def shutdown(id, signal):
    print(f"hook {id} {signal}")

code = kamisama(workers=3, run=run, shutdown=shutdown)
print(f"after kamisama {code} worker_id={worker_id()}")
"""
    )
    master.wait_for_output("pid ", 3)
    master.signal_group(signal.SIGINT)
    assert master.wait() == 0
    out = master.out
    assert out.count("top level") == 1
    assert out.count("after kamisama") == 1
    assert out.strip().endswith("after kamisama 0 worker_id=None")
    assert out.index("after kamisama") > max(out.rindex(f"hook {i}") for i in (1, 2, 3))
    for wid in (1, 2, 3):
        assert f"worker_id={wid}" in out


def test_workers_default_to_web_concurrency(script):
    master = script(
        PRELUDE
        + """
def run(id):
    print(f"pid {id} {os.getpid()}")

sys.exit(kamisama(run))
""",
        env={"WEB_CONCURRENCY": "3"},
    )
    wait_until(lambda: len(master.worker_pids()) == 3, what="3 workers")
    master.signal_master(signal.SIGTERM)
    assert master.wait() == 0
    assert sorted(master.worker_pids()) == [1, 2, 3]
