"""The examples, served the way their READMEs say, through the real CLI, with
the pytest plugin's fixture; real clients (httpx, websockets) check every route."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from processes import wait_until
from websockets.sync.client import connect

from kamisama_server.testing import LiveServer, ServerFactory

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
KAMISAMA_SERVE = Path(sys.executable).with_name("kamisama-serve")


def readme_commands(example: str) -> list[str]:
    """The ``kamisama-serve ...`` lines of an example's README."""
    text = (EXAMPLES / example / "README.md").read_text()
    return re.findall(r"^(kamisama-serve .+)$", text, re.MULTILINE)


@pytest.mark.parametrize("example", ["flask_app", "fastapi_app"])
def test_readme_commands_name_the_example(example: str) -> None:
    assert readme_commands(example) == [
        f"kamisama-serve examples.{example}.app:app --workers 2",
        f"kamisama-serve app:app --app-dir examples/{example} --workers 2",
    ]


def notes_round_trip(server: LiveServer, path: str = "/notes") -> None:
    """Writes on fresh connections (spread over the workers), then every row read back."""
    texts = [f"note {i}" for i in range(6)]
    for text in texts:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            added = client.post(path, json={"text": text}, headers={"Connection": "close"})
        assert added.status_code == 201, server.stderr
        assert added.json()["text"] == text
    with httpx.Client(base_url=server.url, timeout=10) as client:
        listed = client.get(path).json()
        rows = listed["entries"] if isinstance(listed, dict) else listed
        assert [row["text"] for row in rows] == texts
        assert client.post(path, json={"nope": 1}).status_code in (400, 422)


def test_flask_example_routes(kamisama_server_factory: ServerFactory, tmp_path: Path) -> None:
    server = kamisama_server_factory(
        "examples.flask_app.app:app",
        workers=2,
        cwd=REPO,
        env={"EXAMPLE_DB": str(tmp_path / "flask.sqlite3")},
    )
    with httpx.Client(base_url=server.url, timeout=10) as client:
        home = client.get("/")
        assert home.status_code == 200
        assert home.text == "Hello from Flask on kamisama-serve\n"

        info = client.get("/json")
        assert info.headers["content-type"] == "application/json"
        body = info.json()
        assert body["framework"] == "flask"
        assert server.worker_pids()[body["worker"]] == body["pid"]

        assert client.get("/hello/kamisama").json() == {"greeting": "Hello, kamisama!"}

        echoed = client.post("/echo", content=b"ping \x00 pong", headers={"content-type": "x/y"})
        assert (echoed.status_code, echoed.content) == (200, b"ping \x00 pong")
        assert echoed.headers["content-type"] == "x/y"

        assert client.get("/missing").status_code == 404
        assert client.get("/echo").status_code == 405
    notes_round_trip(server)
    assert server.stop(signal.SIGTERM) == 0


def test_fastapi_example_routes_lifespan_and_websocket(
    kamisama_server_factory: ServerFactory, tmp_path: Path
) -> None:
    """Served by the ``kamisama-serve`` script itself, with ``--app-dir`` as in the README."""
    server = kamisama_server_factory(
        "app:app",
        workers=2,
        app_dir=EXAMPLES / "fastapi_app",
        command=[str(KAMISAMA_SERVE)],
        cwd=REPO,
        env={"EXAMPLE_DB": str(tmp_path / "fastapi.sqlite3")},
    )
    assert server.workers == 2
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.get("/").json() == {"message": "Hello from FastAPI on kamisama-serve"}
        assert client.get("/items/42", params={"q": "x"}).json() == {"item_id": 42, "q": "x"}
        assert client.get("/items/nope").status_code == 422

        item = {"name": "apple", "quantity": 3}
        assert client.post("/echo", json=item).json() == item
        assert client.post("/echo", json={"quantity": 3}).status_code == 422

        resources = client.get("/lifespan").json()  # set by this worker's lifespan startup
        assert server.worker_pids()[resources["worker"]] == resources["pid"]

    with connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=10) as websocket:
        for text in ("hello", "kamisama", "é" * 1000):
            websocket.send(text)
            assert websocket.recv(timeout=10) == "echo: " + text
    notes_round_trip(server)
    assert server.stop(signal.SIGTERM) == 0


DJANGO_COMMAND = (
    "python examples/django_app/manage.py migrate && kamisama-serve guestsite.{kind}:application "
    "--app-dir examples/django_app --workers 2"
)


def test_django_readme_gives_one_command_per_interface() -> None:
    text = (EXAMPLES / "django_app" / "README.md").read_text()
    found = re.findall(r"^(python examples/django_app/manage.py .+)$", text, re.MULTILINE)
    assert found == [DJANGO_COMMAND.format(kind="wsgi"), DJANGO_COMMAND.format(kind="asgi")]


def test_django_migrations_are_committed_and_complete(tmp_path: Path) -> None:
    """``makemigrations --check``: the model and its committed migration agree."""
    check = subprocess.run(
        [sys.executable, "examples/django_app/manage.py", "makemigrations", "--check", "--dry-run"],
        cwd=REPO,
        env={**os.environ, "EXAMPLE_DB": str(tmp_path / "check.sqlite3")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert (EXAMPLES / "django_app/guestbook/migrations/0001_initial.py").exists()


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_django_example_serves_orm_views(
    kamisama_server_factory: ServerFactory, tmp_path: Path, kind: str
) -> None:
    """The README's command, run as written: migrate, then serve with two workers."""
    migrate, serve = DJANGO_COMMAND.format(kind=kind).split(" && ")
    env = {"EXAMPLE_DB": str(tmp_path / "django.sqlite3")}
    argv = shlex.split(migrate)
    done = subprocess.run(
        [sys.executable, *argv[1:]],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    words = shlex.split(serve)
    server = kamisama_server_factory(
        words[1], workers=None, args=words[2:], command=[str(KAMISAMA_SERVE)], cwd=REPO, env=env
    )
    assert server.workers == 2
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.get("/").text.startswith("Hello from Django on kamisama-serve")
    notes_round_trip(server, "/entries")
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.get("/async-count").json() == {"count": 6}
        assert client.put("/entries").status_code == 405
    assert server.stop(signal.SIGTERM) == 0


# ---- the Dockerfile (no Docker engine here: static checks, and its CMD served live) ------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of every stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def dockerfile_final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for name, arguments in dockerfile_final_stage():
        if name == "ENV":
            for item in shlex.split(arguments):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def dockerfile_cmd() -> list[str]:
    (arguments,) = [args for name, args in dockerfile_final_stage() if name == "CMD"]
    cmd = json.loads(arguments)  # exec form: a JSON array, else a shell would be PID 1
    assert isinstance(cmd, list) and all(isinstance(part, str) for part in cmd)
    return cmd


def test_dockerfile_runs_the_server_as_pid_1_by_exec_form_as_non_root() -> None:
    stage = dockerfile_final_stage()
    assert stage[0] == ("FROM", "python:3.11-slim")
    cmd = dockerfile_cmd()
    assert cmd[0] == "kamisama-serve"
    assert not {name for name, _ in stage} & {"ENTRYPOINT", "SHELL"}
    (user,) = [args for name, args in stage if name == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    stop = [args for name, args in stage if name == "STOPSIGNAL"]
    assert stop in ([], ["SIGTERM"])


def test_dockerfile_leaves_port_and_workers_to_the_environment() -> None:
    """No flag in the CMD may override ``PORT`` or ``WEB_CONCURRENCY``."""
    cmd = dockerfile_cmd()
    assert not {"-b", "--bind", "--host", "--port", "-w", "--workers"} & set(cmd)
    assert dockerfile_env()["PORT"] == "8000"
    assert "WEB_CONCURRENCY" not in dockerfile_env()


def test_dockerignore_keeps_out_what_the_image_does_not_need_but_not_what_it_copies() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {".git", ".venv", "tests", "benchmarks"} <= set(patterns)
    copied = [
        source
        for name, args in dockerfile_instructions()
        if name == "COPY" and "--from=" not in args
        for source in args.split()[:-1]
    ]
    assert set(copied) == {"pyproject.toml", "README.md", "kamisama_server", "examples"}
    for source in copied:
        assert (REPO / source).exists(), source
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in patterns), source


def test_dockerfile_cmd_serves_with_the_image_environment(
    kamisama_server_factory: ServerFactory,
) -> None:
    """The image's exact command and environment, except the address (127.0.0.1 only)."""
    cmd = dockerfile_cmd()
    env = {k: v for k, v in dockerfile_env().items() if k not in ("PATH", "PORT")}
    server = kamisama_server_factory(
        cmd[1],
        command=[str(KAMISAMA_SERVE)],
        args=cmd[2:],
        env={**env, "WEB_CONCURRENCY": "2"},
        workers=None,  # from WEB_CONCURRENCY, as in the container
        cwd=REPO,
    )
    assert "--workers" not in server.argv
    assert server.workers == 2
    assert httpx.get(server.url + "/", timeout=10).text == "Hello from Flask on kamisama-serve\n"
    assert server.stop(signal.SIGTERM) == 0


# ---- the master as PID 1, as in the container (a PID namespace via unshare) -------------

ORPHANING_APP = """
import subprocess

def app(environ, start_response):
    # sh starts a background sleep and exits at once: the sleep is orphaned,
    # so the kernel hands it to PID 1, the master.
    subprocess.run(["sh", "-c", "sleep 0.5 &"], check=True)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"spawned"]
"""


def _pid_namespace_command() -> list[str] | None:
    """``unshare`` making the next process PID 1 of a new PID namespace, if allowed."""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return None
    for prefix in (
        ["unshare", "--pid", "--fork", "--mount-proc"],
        ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc"],
    ):
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return prefix
    return None


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    return children


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


@pytest.fixture
def as_pid_1(
    tmp_path: Path, kamisama_server_factory: ServerFactory
) -> Iterator[tuple[LiveServer, int]]:
    """A server whose master is PID 1 of its namespace; (server, the master's real pid)."""
    prefix = _pid_namespace_command()
    if prefix is None:
        pytest.skip("cannot create a PID namespace here (needs Linux, unshare, privileges)")
    (tmp_path / "orphaning.py").write_text(ORPHANING_APP)
    server = kamisama_server_factory(
        "orphaning:app", workers=2, command=[*prefix, str(KAMISAMA_SERVE)], cwd=tmp_path
    )
    assert server.stdout.splitlines()[0].endswith("(2 workers, pid 1)")
    (master,) = _children(server.pid)  # server.pid is unshare's, which waits for PID 1
    yield server, master
    if server.process.poll() is None:  # unshare ignores SIGTERM: stop PID 1 itself
        os.kill(master, signal.SIGTERM)
        server.process.wait(20)


def test_master_as_pid_1_serves_and_drains_on_sigterm(as_pid_1: tuple[LiveServer, int]) -> None:
    """What `docker stop` does to the exec-form CMD: SIGTERM to PID 1, from outside."""
    server, master = as_pid_1
    assert httpx.get(server.url, timeout=10).text == "spawned"
    os.kill(master, signal.SIGTERM)
    assert server.process.wait(20) == 0  # unshare exits with PID 1's status
    server.wait_for("worker 1 (pid", stream="stderr")
    assert server.stderr.count(" shut down\n") == 2


def test_master_as_pid_1_reaps_orphaned_grandchildren(as_pid_1: tuple[LiveServer, int]) -> None:
    server, master = as_pid_1
    assert httpx.get(server.url, timeout=10).text == "spawned"
    (orphan,) = wait_until(
        lambda: [pid for pid in _children(master) if _comm(pid) == "sleep"],
        timeout=10,
        what="the orphaned sleep handed to PID 1",
    )
    wait_until(
        lambda: not Path(f"/proc/{orphan}").exists(),
        timeout=3,
        what=f"orphan {orphan} reaped after its 0.5 s sleep",
    )
