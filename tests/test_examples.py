"""The examples, served the way their READMEs say, through the real CLI, with
the pytest plugin's fixture; real clients (httpx, websockets) check every route."""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from kamisama_server.testing import ServerFactory

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


def test_flask_example_routes(kamisama_server_factory: ServerFactory) -> None:
    server = kamisama_server_factory("examples.flask_app.app:app", workers=2, cwd=REPO)
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
    assert server.stop(signal.SIGTERM) == 0


def test_fastapi_example_routes_lifespan_and_websocket(
    kamisama_server_factory: ServerFactory,
) -> None:
    """Served by the ``kamisama-serve`` script itself, with ``--app-dir`` as in the README."""
    server = kamisama_server_factory(
        "app:app",
        workers=2,
        app_dir=EXAMPLES / "fastapi_app",
        command=[str(KAMISAMA_SERVE)],
        cwd=REPO,
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
    assert server.stop(signal.SIGTERM) == 0
