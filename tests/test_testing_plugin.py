"""The pytest plugin: a user's test suite run with pytester against a tiny app,
and ``start_server``/``LiveServer`` used directly. Real servers, real clients;
every process the plugin started must be gone after teardown."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from processes import pid_alive, wait_until

from kamisama_server.testing import LiveServer, ServerFactory, ServerStartError, start_server

pytest_plugins = ["pytester"]

APP = """
import os
from kamisama_server import worker_id

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{worker_id()} {os.getpid()}".encode()]
"""

# A user's suite: one test per fixture style. Each records what it saw, so the
# outer test can check the processes are gone once the inner run is over.
USER_TESTS = """
import json, os
import httpx, pytest

def record(server):
    with open(os.environ["RECORD"], "a") as out:
        print(json.dumps({"master": server.pid, "workers": server.worker_pids()}), file=out)

@pytest.mark.kamisama_app("myapp:app", workers=2, keep_alive=1)
def test_marker(kamisama_server):
    record(kamisama_server)
    assert len(kamisama_server.worker_pids()) == 2
    worker, pid = httpx.get(kamisama_server.url).text.split()
    assert kamisama_server.worker_pids()[int(worker)] == int(pid)

def test_factory(kamisama_server_factory):
    first = kamisama_server_factory("myapp:app", workers=1)
    second = kamisama_server_factory("myapp:app", workers=3, threads=2)
    record(first)
    record(second)
    assert (first.workers, second.workers) == (1, 3)
    assert first.port != second.port
    assert httpx.get(second.url).status_code == 200
"""


def dead(pids: list[int]) -> bool:
    return not any(pid_alive(pid) for pid in pids)


def recorded_pids(record: Path) -> list[int]:
    pids: list[int] = []
    for line in record.read_text().splitlines():
        seen = json.loads(line)
        pids += [seen["master"], *seen["workers"].values()]
    return pids


def test_user_suite_uses_marker_and_factory_and_nothing_outlives_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = pytester.path / "record.jsonl"
    monkeypatch.setenv("RECORD", str(record))
    pytester.makepyfile(myapp=APP, test_user=USER_TESTS)
    result = pytester.runpytest("--strict-markers", "-p", "no:xdist")
    result.assert_outcomes(passed=2)
    pids = recorded_pids(record)
    assert len(pids) == 3 + 2 + 4  # masters and workers of three servers
    wait_until(lambda: dead(pids), timeout=10, what="every server process gone")


def test_ini_options_and_the_ini_directory_as_cwd(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``kamisama_args`` come last (they win over the default workers=2), and the
    app is found next to the ini file although pytest runs from elsewhere."""
    pytester.makeini("[pytest]\nkamisama_app = myapp:app\nkamisama_args = --workers 3\n")
    pytester.makepyfile(myapp=APP)
    pytester.makepyfile(
        test_ini="""
        import httpx
        def test_ini(kamisama_server):
            assert kamisama_server.workers == 3
            assert httpx.get(kamisama_server.url).status_code == 200
        """
    )
    elsewhere = pytester.mkdir("elsewhere")
    monkeypatch.chdir(elsewhere)
    result = pytester.runpytest(str(pytester.path), "-p", "no:xdist")
    result.assert_outcomes(passed=1)


def test_plugin_loads_by_name_when_autoload_is_off(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(myapp=APP)
    pytester.makepyfile(
        test_named="""
        import httpx, pytest
        @pytest.mark.kamisama_app("myapp:app", workers=1)
        def test_named(kamisama_server):
            assert httpx.get(kamisama_server.url).status_code == 200
        """
    )
    result = pytester.runpytest("-p", "kamisama_server.testing", "--strict-markers")
    result.assert_outcomes(passed=1)


def test_fixture_without_app_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_no_app(kamisama_server):\n    pass\n")
    result = pytester.runpytest("-p", "no:xdist")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*needs @pytest.mark.kamisama_app*or the ini option*"])


def test_suite_that_does_not_use_the_plugin_starts_nothing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_plain():\n    assert True\n")
    result = pytester.runpytest("-p", "no:xdist", "--strict-markers")
    result.assert_outcomes(passed=1)


def test_plugin_import_pulls_in_no_server_or_client_code() -> None:
    """Registered for every pytest run: it must stay cheap (stdlib and pytest only)."""
    code = "import sys, kamisama_server.testing; print(' '.join(sorted(sys.modules)))"
    modules = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    heavy = [
        m
        for m in modules
        if m.startswith(("kamisama_server.http", "kamisama_server.serve", "httpx", "flask"))
        or m in ("fastapi", "uvicorn", "uvloop", "websockets")
    ]
    assert heavy == []


# ---- direct use ------------------------------------------------------------------------


def test_start_server_answers_and_stops_with_the_exit_code(tmp_path: Path) -> None:
    (tmp_path / "myapp.py").write_text(APP)
    with start_server("myapp:app", workers=2, cwd=tmp_path, access_log=False) as server:
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert "--no-access-log" in server.argv
        worker, pid = httpx.get(server.url, timeout=10).text.split()
        assert server.worker_pids()[int(worker)] == int(pid)
        pids = [server.pid, *server.worker_pids().values()]
        assert server.stop(signal.SIGINT) == 0
        server.wait_for("SIGINT received")
        assert "listening on" not in server.stderr
    assert dead(pids)


def test_worker_pids_follow_a_respawn_and_a_new_slot(
    kamisama_server_factory: ServerFactory, tmp_path: Path
) -> None:
    (tmp_path / "myapp.py").write_text(APP)
    server = kamisama_server_factory("myapp:app", workers=2, cwd=tmp_path)
    before = server.worker_pids()
    os.kill(before[1], signal.SIGKILL)  # a worker of the server this test started
    wait_until(
        lambda: server.worker_pids().get(1) not in (None, before[1]),
        timeout=15,
        what="worker 1 respawned",
    )
    assert server.worker_pids()[2] == before[2]
    server.send_signal(signal.SIGTTIN)
    wait_until(lambda: len(server.worker_pids()) == 3, timeout=15, what="a third worker")


def test_an_app_that_cannot_import_fails_fast_with_its_output(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError) as caught:
        start_server("no_such_module:app", workers=2, cwd=tmp_path, startup_timeout=30)
    message = str(caught.value)
    assert "exited with code 3 before listening" in message
    assert "no_such_module" in message.split("--- stderr ---")[1]


def test_a_misspelt_option_is_reported_with_the_usage_error(tmp_path: Path) -> None:
    (tmp_path / "myapp.py").write_text(APP)
    with pytest.raises(ServerStartError) as caught:
        start_server("myapp:app", cwd=tmp_path, wokers=3)
    assert "exited with code 2" in str(caught.value)
    assert "--wokers" in str(caught.value)


def test_a_server_silent_past_the_deadline_is_killed_with_its_group(tmp_path: Path) -> None:
    """Workers stuck importing the app never make the master announce readiness."""
    (tmp_path / "slowapp.py").write_text("import time\ntime.sleep(120)\napp = None\n")
    with pytest.raises(ServerStartError) as caught:
        start_server("slowapp:app", workers=2, cwd=tmp_path, startup_timeout=2)
    message = str(caught.value)
    assert "did not report listening within 2" in message
    master = re.search(r"\(pid (\d+)\)", message)
    assert master is not None
    pids = [int(master.group(1))]
    pids += [int(pid) for pid in re.findall(r"worker \d+ \(pid (\d+)\) started", message)]
    assert len(pids) == 3
    wait_until(lambda: dead(pids), timeout=10, what="master and stuck workers killed")


FAKE_SERVER = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(f"kamisama: listening on http://127.0.0.1:1 (1 workers, pid {os.getpid()})", flush=True)
print(f"[kamisama] worker 1 (pid {child.pid}) started", file=sys.stderr, flush=True)
time.sleep(120)
"""


def test_close_kills_a_master_that_ignores_sigterm_and_its_children(tmp_path: Path) -> None:
    """The plugin's last resort, shown with a stand-in that hangs on purpose."""
    script = tmp_path / "fake.py"
    script.write_text(textwrap.dedent(FAKE_SERVER))
    server = LiveServer([sys.executable, str(script)], stop_timeout=0.5).wait_listening(30)
    assert (server.url, server.port, server.workers) == ("http://127.0.0.1:1", 1, 1)
    server.wait_for("started", stream="stderr")
    pids = [server.pid, *server.worker_pids().values()]
    assert len(pids) == 2
    with pytest.raises(AssertionError, match=r"did not exit within 0\.5s of SIGTERM"):
        server.stop(signal.SIGTERM)
    wait_until(lambda: dead(pids), timeout=10, what="fake master and its child killed")
    assert server.process.returncode == -signal.SIGKILL
