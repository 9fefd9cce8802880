"""What ``kamisama-serve`` writes, read as an operator reads it.

Every line the server writes is a ``logging`` record under ``kamisama``: with
time and level, whole (never merged with a sibling's), governed by
``--log-level`` or replaced by ``--log-config``; the server leaves the root
logger to the app; start-up failures are one line naming the cause.
Each test runs the real console script (see serve_support.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serve_support import ASGI_PID_APP, PID_APP, Server, StartServer, serving
from test_serve_cli import ASGI_APP

BIND = ["--bind", "127.0.0.1:0", "--timeout", "5"]
LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \[kamisama\] \S"
)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServer]:
    yield from serving(tmp_path)


def started(serve: StartServer, args: list[str], **kwargs: object) -> Server:
    server = serve([*args, *BIND], **kwargs)
    server.wait_listening()
    return server


def stop(server: Server) -> None:
    assert server.stop(signal.SIGTERM) == 0, server.output()


# --------------------------------------------------------------------------- the lines


def test_every_line_has_time_and_level(serve: StartServer) -> None:
    server = started(serve, ["app:app", "-w", "2"], modules={"app": PID_APP})
    stop(server)
    lines = server.err.splitlines()
    assert len(lines) >= 5, server.output()  # 2 started, shutting down, 2 shut down
    assert [line for line in lines if not LINE.match(line)] == [], server.output()
    assert sum(" INFO [kamisama] worker " in line and "started" in line for line in lines) == 2


def test_log_level_critical_silences_master_and_worker_lines(serve: StartServer) -> None:
    server = started(
        serve, ["app:app", "-w", "2", "--log-level", "critical"], modules={"app": PID_APP}
    )
    assert server.get("/").status_code == 200
    stop(server)
    assert server.err == "", server.output()
    assert len(server.listening_lines()) == 1  # stdout's readiness line is not a log line


HOOK = """
    import logging

    def on_run(wid):
        log = logging.getLogger("kamisama.test")
        for i in range(300):
            log.info("worker %d line %d %s", wid, i, "x" * 60)
"""


@pytest.mark.parametrize("run", range(3))
def test_no_line_merges_when_four_workers_log_at_once_unbuffered(
    serve: StartServer, run: int
) -> None:
    server = started(
        serve,
        ["app:app", "-w", "4", "--run", "hooks:on_run"],
        modules={"app": PID_APP, "hooks": HOOK},
        env={"PYTHONUNBUFFERED": "1"},
    )
    stop(server)
    lines = server.err.splitlines()
    assert [line for line in lines if not LINE.match(line)] == [], server.output()
    hook_lines = [line for line in lines if " line " in line]
    assert len(hook_lines) == 4 * 300, server.output()
    assert all(line.endswith("x" * 60) for line in hook_lines)


# --------------------------------------------------------------------------- who configures


JSON_FORMATTER = """
    import json
    import logging

    class JsonLines(logging.Formatter):
        def format(self, record):
            return json.dumps({"level": record.levelname, "logger": record.name,
                               "message": record.getMessage()})
"""


def test_log_config_json_replaces_our_setup_and_can_emit_json(
    serve: StartServer, tmp_path: Path
) -> None:
    config = {
        "version": 1,
        "formatters": {"json": {"()": "jsonlines.JsonLines"}},
        "handlers": {"err": {"class": "logging.StreamHandler", "formatter": "json"}},
        "loggers": {"kamisama": {"handlers": ["err"], "level": "INFO", "propagate": False}},
    }
    path = tmp_path / "logging.json"
    path.write_text(json.dumps(config))
    server = started(
        serve,
        ["app:app", "-w", "2", "--access-log", "--log-config", str(path)],
        modules={"app": PID_APP, "jsonlines": JSON_FORMATTER},
    )
    assert server.get("/").status_code == 200
    stop(server)
    records = [json.loads(line) for line in server.err.splitlines()]
    loggers = {record["logger"] for record in records}
    assert {"kamisama.master", "kamisama.access"} <= loggers, server.err
    assert any(r["message"].startswith("worker 1 (pid ") for r in records)
    assert any('"GET / HTTP/1.1" 200' in r["message"] for r in records)


INI_CONFIG = """
[loggers]
keys=root,kamisama

[handlers]
keys=err

[formatters]
keys=plain

[logger_root]
handlers=

[logger_kamisama]
level=WARNING
handlers=err
propagate=0
qualname=kamisama

[handler_err]
class=StreamHandler
formatter=plain
args=(sys.stderr,)

[formatter_plain]
format=INI %(levelname)s %(name)s %(message)s
"""


def test_log_config_ini_is_read_with_file_config(serve: StartServer, tmp_path: Path) -> None:
    path = tmp_path / "logging.ini"
    path.write_text(INI_CONFIG)
    server = started(
        serve, ["app:app", "-w", "1", "--log-config", str(path)], modules={"app": PID_APP}
    )
    stop(server)  # INFO lines: below the file's WARNING
    assert server.err == "", server.output()
    killed = serve(
        ["app:app", "-w", "1", "--log-config", str(path), "--bind", "127.0.0.1:0"],
        modules={"app": PID_APP},
    )
    killed.wait_listening()
    worker = next(iter(killed.answering_pids(1)))
    os.kill(worker, signal.SIGKILL)
    killed.wait_for_log("respawning in")
    assert "INI WARNING kamisama.master worker 1 (pid " in killed.err, killed.output()


def test_a_bad_log_config_stops_with_exit_3_naming_the_file(
    serve: StartServer, tmp_path: Path
) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    server = serve(["app:app", "--log-config", str(path), *BIND], modules={"app": PID_APP})
    assert server.wait(15) == 3, server.output()
    assert f"--log-config {path}" in server.err


APP_OWNS_ROOT = """
    import logging

    logging.basicConfig(format="APP %(levelname)s %(name)s %(message)s")

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/root":
            logging.getLogger().error("root-logged error")
        else:
            1 / 0
        start_response("200 OK", [("Content-Length", "0")])
        return []
"""

DJANGO_LIKE = """
    import logging

    # Django's default: a console handler on "django", which still propagates to root.
    logging.getLogger("django").addHandler(logging.StreamHandler())

    def app(environ, start_response):
        logging.getLogger("django.request").error("Internal Server Error: /")
        start_response("500 Internal Server Error", [("Content-Length", "0")])
        return []
"""


def test_an_app_configuring_root_sees_each_error_once_in_its_format(serve: StartServer) -> None:
    server = started(serve, ["app:app", "-w", "1"], modules={"app": APP_OWNS_ROOT})
    assert server.get("/root").status_code == 200
    assert server.get("/raise").status_code == 500
    stop(server)
    err = server.err
    assert err.count("root-logged error") == 1, err
    assert "APP ERROR root root-logged error" in err  # the app's format: root is the app's
    assert err.count("ZeroDivisionError: division by zero") == 1, err  # ours, not root's too
    assert "APP " not in err.replace("APP ERROR root root-logged error", ""), err


def test_a_django_like_logger_prints_an_error_once(serve: StartServer) -> None:
    server = started(serve, ["app:app", "-w", "1"], modules={"app": DJANGO_LIKE})
    assert server.get("/").status_code == 500
    stop(server)
    assert server.err.count("Internal Server Error: /") == 1, server.err


# --------------------------------------------------------------------------- access log


def test_access_log_format_renders_gunicorns_atoms(serve: StartServer) -> None:
    fmt = '%(h)s %(t)s "%(r)s" %(s)s %(b)s %(D)s "%(a)s" %(m)s %(U)s %(q)s %({x-trace}i)s'
    server = started(
        serve,
        ["app:app", "-w", "1", "--access-log", "--access-log-format", fmt],
        modules={"app": PID_APP},
    )
    response = httpx.get(
        f"{server.url}/path?q=1", headers={"user-agent": "probe/1.0", "x-trace": "t-42"}
    )
    assert response.status_code == 200
    size = len(response.content)
    stop(server)
    [line] = [line for line in server.lines() if "probe/1.0" in line]
    pattern = (
        r'^127\.0\.0\.1 \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "GET /path\?q=1 HTTP/1\.1" '
        rf'200 {size} \d+ "probe/1\.0" GET /path q=1 t-42$'
    )
    assert re.match(pattern, line), line


def test_default_access_line_has_time_status_size_and_duration(serve: StartServer) -> None:
    server = started(serve, ["app:app", "-w", "1", "--access-log"], modules={"app": PID_APP})
    response = httpx.get(f"{server.url}/", headers={"user-agent": "probe/2.0"})
    stop(server)
    [line] = [line for line in server.lines() if "probe/2.0" in line]
    pattern = rf'^127\.0\.0\.1 \[.+\] "GET / HTTP/1\.1" 200 {len(response.content)} \d+\.\d{{6}}s '
    assert re.match(pattern, line), line


def test_a_bad_access_log_format_is_a_usage_error(serve: StartServer) -> None:
    server = serve(["app:app", "--access-log-format", "%(nope)s"], modules={"app": PID_APP})
    assert server.wait(10) == 2, server.output()
    assert "unknown access log atom %(nope)s" in server.err


def test_lifespan_lines_appear_once_per_server_not_per_worker(serve: StartServer) -> None:
    # Listening is announced once every worker is ready, i.e. past its lifespan startup.
    server = started(serve, ["app:app", "-w", "2"], modules={"app": ASGI_APP})
    assert server.workers == 2
    stop(server)
    err = server.err
    for text in ("Waiting for application startup.", "Application startup complete."):
        assert err.count(text) == 1, err
    assert err.count("Waiting for application shutdown.") == 1, err
    assert [line for line in err.splitlines() if not LINE.match(line)] == [], err


# --------------------------------------------------------------------------- start-up failures


def test_an_app_that_cannot_be_imported_is_one_line_and_exit_3(serve: StartServer) -> None:
    broken = "import os\n\nraise RuntimeError('no DATABASE_URL')\n"
    server = serve(["app:app", "-w", "4", *BIND], modules={"app": broken})
    assert server.wait(15) == 3, server.output()
    lines = server.err.splitlines()
    naming = [line for line in lines if "RuntimeError: no DATABASE_URL" in line]
    assert len(naming) == 1, server.output()
    assert " ERROR [kamisama] " in naming[0] and "app.py:3)" in naming[0]
    assert "Traceback" not in server.err
    # 4 started, the cause, shutting down, and "shut down" for those stopped before importing
    assert len(lines) <= 4 + 2 + 3, server.output()


def test_import_failure_traceback_is_once_at_debug_level(serve: StartServer) -> None:
    broken = "raise RuntimeError('no DATABASE_URL')\n"
    args = ["app:app", "-w", "3", "--log-level", "debug", *BIND]
    server = serve(args, modules={"app": broken})
    assert server.wait(15) == 3, server.output()
    assert server.err.count("Traceback (most recent call last)") == 1, server.output()
    lines = server.err.splitlines()
    cause = next(i for i, line in enumerate(lines) if " ERROR [kamisama] " in line)
    trace = next(i for i, line in enumerate(lines) if "Traceback (most recent" in line)
    assert trace > cause and " DEBUG [kamisama] " in lines[trace], server.output()


def test_a_factory_without_factory_flag_stops_with_a_hint(serve: StartServer) -> None:
    factory = PID_APP + "\n\ndef create_app():\n    return app\n"
    server = serve(["app:create_app", "-w", "2", *BIND], modules={"app": factory})
    assert server.wait(15) == 3, server.output()
    hints = [line for line in server.err.splitlines() if "pass --factory" in line]
    assert len(hints) == 1, server.output()
    assert "create_app() takes no arguments" in hints[0]


def test_the_same_factory_with_factory_flag_serves(serve: StartServer) -> None:
    factory = ASGI_PID_APP + "\n\ndef create_app():\n    return app\n"
    server = started(serve, ["app:create_app", "--factory", "-w", "1"], modules={"app": factory})
    assert server.get("/").status_code == 200
    stop(server)
