"""The pytest plugin, seen from a user's suite run in a real pytest subprocess: the
server's traceback in the report of a failing test, one rule for where the app
is found, and no server left behind when pytest is SIGKILLed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from processes import GroupProcess, pid_alive, wait_until

FAILING_APP = """
def app(environ, start_response):
    if environ["PATH_INFO"] == "/boom":
        raise ValueError("the app's own mistake, 41 + 1")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


def run_pytest(directory: Path, *args: str, cwd: Path | None = None) -> str:
    """A user's pytest run (the plugin autoloads from the entry point); its output."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", *args],
        cwd=cwd or directory,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},
    )
    return result.stdout + result.stderr


def write(directory: Path, files: dict[str, str]) -> None:
    for name, source in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))


def test_a_failing_test_shows_the_servers_traceback_in_its_report(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "pytest.ini": "[pytest]\n",
            "myapp.py": FAILING_APP,
            "test_user.py": """
                import urllib.error, urllib.request

                def status(url):
                    try:
                        return urllib.request.urlopen(url).status
                    except urllib.error.HTTPError as error:
                        return error.code

                def test_boom(kamisama_server_factory):
                    server = kamisama_server_factory("myapp:app", workers=1)
                    assert status(server.url + "/") == 200
                    assert status(server.url + "/boom") == 200

                def test_fine(kamisama_server_factory):
                    server = kamisama_server_factory("myapp:app", workers=1)
                    assert status(server.url + "/") == 200
            """,
        },
    )
    output = run_pytest(tmp_path)
    assert "1 failed, 1 passed" in output, output
    assert "kamisama-serve (pid " in output and ") stderr" in output, output
    assert "ValueError: the app's own mistake, 41 + 1" in output, output
    assert output.count("kamisama-serve (pid ") == 1, output  # the passing test adds nothing


def test_every_entry_point_finds_the_app_from_the_ini_directory(tmp_path: Path) -> None:
    """``cd tests && pytest``: the documented session fixture still finds ``myapp``."""
    write(
        tmp_path,
        {
            "pytest.ini": "[pytest]\nkamisama_app = myapp:app\n",
            "myapp.py": FAILING_APP,
            "tests/test_where.py": """
                import urllib.request
                import pytest
                from kamisama_server.testing import start_server

                @pytest.fixture(scope="session")
                def live():
                    with start_server("myapp:app", workers=1) as server:
                        yield server

                def test_session_fixture(live):
                    assert urllib.request.urlopen(live.url).read() == b"ok"

                def test_factory(kamisama_server_factory):
                    server = kamisama_server_factory("myapp:app", workers=1)
                    assert urllib.request.urlopen(server.url).read() == b"ok"

                def test_fixture(kamisama_server):
                    assert urllib.request.urlopen(kamisama_server.url).read() == b"ok"
            """,
        },
    )
    output = run_pytest(tmp_path, cwd=tmp_path / "tests")
    assert "3 passed" in output, output


SIGKILLED_SUITE = """
import json, os, time
from kamisama_server.testing import start_server

def test_hangs_with_a_server():
    server = start_server("myapp:app", workers=2)
    with open(os.environ["RECORD"] + ".tmp", "w") as out:
        json.dump([server.pid, *server.worker_pids().values()], out)
    os.rename(os.environ["RECORD"] + ".tmp", os.environ["RECORD"])
    time.sleep(120)
"""


def test_servers_die_with_a_sigkilled_pytest(tmp_path: Path) -> None:
    write(tmp_path, {"pytest.ini": "[pytest]\n", "myapp.py": FAILING_APP})
    write(tmp_path, {"test_hang.py": SIGKILLED_SUITE})
    record = tmp_path / "pids.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["RECORD"] = str(record)
    argv = [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "-s"]
    argv += [str(tmp_path / "test_hang.py"), "--rootdir", str(tmp_path)]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    inner = GroupProcess(run_dir, argv, env)
    pids: list[int] = []
    try:
        wait_until(lambda: record.exists() or inner.process.poll() is not None, 60, "the pids")
        assert record.exists(), inner.output()
        pids = json.loads(record.read_text())
        assert len(pids) == 3 and all(pid_alive(pid) for pid in pids)
        os.kill(inner.pid, signal.SIGKILL)  # pytest only: no teardown, no atexit
        inner.process.wait(10)
        wait_until(lambda: not any(pid_alive(pid) for pid in pids), 20, "no server left")
    finally:
        inner.cleanup()
        for pid in pids:  # only if the test failed: never leave them to the machine
            with contextlib.suppress(ProcessLookupError):
                if pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
