"""kamisama_server.config: flags, KAMISAMA_* environment, defaults, usage errors."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kamisama_server.config import (
    OPTIONS,
    ServeConfig,
    build_parser,
    flags_markdown,
    parse_args,
)
from kamisama_server.sockets import default_socket_mode


def usage_error(capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str]) -> str:
    """Run parse_args expecting argparse's usage error; return its stderr."""
    with pytest.raises(SystemExit) as info:
        parse_args(argv, env)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: kamisama-serve")
    return err


def cpus() -> int:
    if hasattr(os, "process_cpu_count"):
        return int(os.process_cpu_count() or 1)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# --------------------------------------------------------------------------- defaults


def test_defaults_are_issue_3s(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    config = parse_args(["myapp:app"], {})
    assert config == ServeConfig(
        app="myapp:app",
        factory=False,
        app_dir=str(tmp_path),
        interface="auto",
        binds=("127.0.0.1:8000",),
        workers=cpus(),
        timeout=10.0,
        threads=1,
        backlog=2048,
        socket_mode=default_socket_mode(),
        keep_alive=5.0,
        header_timeout=10.0,
        http_parser="auto",
        limit_concurrency=None,
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1",
        server_header=True,
        root_path="",
        ssl_certfile=None,
        ssl_keyfile=None,
        access_log=False,
        log_level="info",
        preload=False,
        limit_request_line=8190,
        limit_request_fields=100,
        limit_request_field_size=8190,
        limit_request_body=None,
        run_hook=None,
        shutdown_hook=None,
    )


def test_every_config_field_has_an_option_and_vice_versa() -> None:
    fields = {f.name for f in dataclasses.fields(ServeConfig)}
    dests = {o.dest for o in OPTIONS} - {"host", "port"}  # shorthands that become binds
    assert fields == dests


# --------------------------------------------------------------------------- each flag


@pytest.fixture
def pem(tmp_path: Path) -> str:
    path = tmp_path / "cert.pem"
    path.write_text("not checked here")
    return str(path)


FLAG_CASES: list[tuple[list[str], str, Any]] = [
    (["--factory"], "factory", True),
    (["--interface", "asgi"], "interface", "asgi"),
    (["--interface", "WSGI"], "interface", "wsgi"),
    (["-b", "0.0.0.0:9000"], "binds", ("0.0.0.0:9000",)),
    (["--bind", "[::1]:0", "-b", "unix:/tmp/k.sock", "--bind", "fd://3"], "binds",
     ("[::1]:0", "unix:/tmp/k.sock", "fd://3")),
    (["--host", "0.0.0.0"], "binds", ("0.0.0.0:8000",)),
    (["--port", "0"], "binds", ("127.0.0.1:0",)),
    (["--host", "::1", "--port", "81"], "binds", ("[::1]:81",)),
    (["--host", "[::1]"], "binds", ("[::1]:8000",)),
    (["-w", "3"], "workers", 3),
    (["--workers", "7"], "workers", 7),
    (["--timeout", "2.5"], "timeout", 2.5),
    (["--timeout", "0"], "timeout", 0.0),
    (["--threads", "8"], "threads", 8),
    (["--backlog", "16"], "backlog", 16),
    (["--socket-mode", "shared"], "socket_mode", "shared"),
    (["--socket-mode", "reuseport"], "socket_mode", "reuseport"),
    (["--keep-alive", "0"], "keep_alive", 0.0),
    (["--header-timeout", "0.5"], "header_timeout", 0.5),
    (["--http-parser", "h11"], "http_parser", "h11"),
    (["--limit-concurrency", "10"], "limit_concurrency", 10),
    (["--proxy-headers"], "proxy_headers", True),
    (["--forwarded-allow-ips", "10.0.0.0/8, 127.0.0.1,::1"], "forwarded_allow_ips",
     "10.0.0.0/8,127.0.0.1,::1"),
    (["--forwarded-allow-ips", "*"], "forwarded_allow_ips", "*"),
    (["--root-path", "/api/"], "root_path", "/api"),
    (["--no-access-log"], "access_log", False),
    (["--access-log"], "access_log", True),
    (["--log-level", "debug"], "log_level", "debug"),
    (["--preload"], "preload", True),
    (["--limit-request-line", "100"], "limit_request_line", 100),
    (["--limit-request-line", "0"], "limit_request_line", 0),
    (["--limit-request-fields", "5"], "limit_request_fields", 5),
    (["--limit-request-field-size", "64"], "limit_request_field_size", 64),
    (["--limit-request-body", "1048576"], "limit_request_body", 1048576),
    (["--limit-request-body", "0"], "limit_request_body", None),
    (["--run", "hooks:on_run"], "run_hook", "hooks:on_run"),
    (["--shutdown", "hooks.sub:on_stop"], "shutdown_hook", "hooks.sub:on_stop"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "name", "expected"), FLAG_CASES)
def test_each_flag_sets_its_field(argv: list[str], name: str, expected: Any) -> None:
    assert getattr(parse_args(["m:app", *argv], {}), name) == expected


def test_app_may_come_after_the_flags() -> None:
    assert parse_args(["-w", "2", "m:app"], {}).app == "m:app"


def test_app_dir_is_made_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path)
    assert parse_args(["m:app", "--app-dir", "src"], {}).app_dir == str(tmp_path / "src")


def test_ssl_files(pem: str) -> None:
    config = parse_args(["m:app", "--ssl-certfile", pem, "--ssl-keyfile", pem], {})
    assert (config.ssl_certfile, config.ssl_keyfile) == (pem, pem)


# --------------------------------------------------------------------------- environment


ENV_CASES: list[tuple[str, str, str, Any]] = [
    ("KAMISAMA_WORKERS", "4", "workers", 4),
    ("KAMISAMA_TIMEOUT", "3", "timeout", 3.0),
    ("KAMISAMA_THREADS", "2", "threads", 2),
    ("KAMISAMA_BACKLOG", "64", "backlog", 64),
    ("KAMISAMA_SOCKET_MODE", "shared", "socket_mode", "shared"),
    ("KAMISAMA_KEEP_ALIVE", "1.5", "keep_alive", 1.5),
    ("KAMISAMA_HEADER_TIMEOUT", "2", "header_timeout", 2.0),
    ("KAMISAMA_LIMIT_CONCURRENCY", "9", "limit_concurrency", 9),
    ("KAMISAMA_FORWARDED_ALLOW_IPS", "*", "forwarded_allow_ips", "*"),
    ("KAMISAMA_ROOT_PATH", "/x", "root_path", "/x"),
    ("KAMISAMA_LOG_LEVEL", "WARNING", "log_level", "warning"),
    ("KAMISAMA_INTERFACE", "wsgi", "interface", "wsgi"),
    ("KAMISAMA_LIMIT_REQUEST_LINE", "4094", "limit_request_line", 4094),
    ("KAMISAMA_LIMIT_REQUEST_FIELDS", "50", "limit_request_fields", 50),
    ("KAMISAMA_LIMIT_REQUEST_FIELD_SIZE", "100", "limit_request_field_size", 100),
    ("KAMISAMA_LIMIT_REQUEST_BODY", "10", "limit_request_body", 10),
    ("KAMISAMA_RUN", "h:r", "run_hook", "h:r"),
    ("KAMISAMA_SHUTDOWN", "h:s", "shutdown_hook", "h:s"),
    ("KAMISAMA_BIND", "127.0.0.1:1 unix:/tmp/a.sock,[::1]:2", "binds",
     ("127.0.0.1:1", "unix:/tmp/a.sock", "[::1]:2")),
    ("KAMISAMA_HOST", "0.0.0.0", "binds", ("0.0.0.0:8000",)),
    ("KAMISAMA_PORT", "9", "binds", ("127.0.0.1:9",)),
    ("KAMISAMA_PRELOAD", "1", "preload", True),
    ("KAMISAMA_PRELOAD", "true", "preload", True),
    ("KAMISAMA_PRELOAD", "Yes", "preload", True),
    ("KAMISAMA_PRELOAD", "0", "preload", False),
    ("KAMISAMA_ACCESS_LOG", "false", "access_log", False),
    ("KAMISAMA_ACCESS_LOG", "off", "access_log", False),
    ("KAMISAMA_PROXY_HEADERS", "on", "proxy_headers", True),
    ("KAMISAMA_FACTORY", "1", "factory", True),
    ("KAMISAMA_WORKERS", "", "workers", None),  # empty = unset
]  # fmt: skip


@pytest.mark.parametrize(("var", "raw", "name", "expected"), ENV_CASES)
def test_each_option_comes_from_the_environment(
    var: str, raw: str, name: str, expected: Any
) -> None:
    value = getattr(parse_args(["m:app"], {var: raw}), name)
    assert value == (cpus() if expected is None else expected)


def test_app_and_app_dir_from_the_environment(tmp_path: Path) -> None:
    config = parse_args([], {"KAMISAMA_APP": "pkg.m:obj.app", "KAMISAMA_APP_DIR": str(tmp_path)})
    assert (config.app, config.app_dir) == ("pkg.m:obj.app", str(tmp_path))


def test_ssl_from_the_environment(pem: str) -> None:
    config = parse_args(["m:app"], {"KAMISAMA_SSL_CERTFILE": pem, "KAMISAMA_SSL_KEYFILE": pem})
    assert (config.ssl_certfile, config.ssl_keyfile) == (pem, pem)


@pytest.mark.parametrize(
    ("argv", "env", "name", "expected"),
    [
        (["-w", "2"], {"KAMISAMA_WORKERS": "4", "WEB_CONCURRENCY": "6"}, "workers", 2),
        (["--no-preload"], {"KAMISAMA_PRELOAD": "1"}, "preload", False),
        (["--access-log"], {"KAMISAMA_ACCESS_LOG": "0"}, "access_log", True),
        (["--timeout", "1"], {"KAMISAMA_TIMEOUT": "oops"}, "timeout", 1.0),
        (["-b", "127.0.0.1:1"], {"KAMISAMA_BIND": "127.0.0.1:2"}, "binds", ("127.0.0.1:1",)),
        (["-b", "127.0.0.1:1"], {"KAMISAMA_HOST": "0.0.0.0"}, "binds", ("127.0.0.1:1",)),
        (["--port", "3"], {"KAMISAMA_BIND": "127.0.0.1:2"}, "binds", ("127.0.0.1:3",)),
        (["x:y"], {"KAMISAMA_APP": "m:app"}, "app", "x:y"),
    ],
)
def test_flags_win_over_the_environment(
    argv: list[str], env: dict[str, str], name: str, expected: Any
) -> None:
    args = argv if name == "app" else ["m:app", *argv]
    assert getattr(parse_args(args, env), name) == expected


def test_workers_precedence_flag_env_web_concurrency_cpus() -> None:
    assert parse_args(["m:app"], {"WEB_CONCURRENCY": "5"}).workers == 5
    assert parse_args(["m:app"], {"WEB_CONCURRENCY": "5", "KAMISAMA_WORKERS": "3"}).workers == 3
    assert parse_args(["m:app"], {}).workers == cpus()


def test_port_env_means_all_interfaces_on_that_port() -> None:
    assert parse_args(["m:app"], {"PORT": "5000"}).binds == ("0.0.0.0:5000",)
    assert parse_args(["m:app", "--host", "127.0.0.1"], {"PORT": "5000"}).binds == (
        "127.0.0.1:5000",
    )
    assert parse_args(["m:app", "--port", "6000"], {"PORT": "5000"}).binds == ("0.0.0.0:6000",)
    assert parse_args(["m:app", "-b", "unix:/tmp/x"], {"PORT": "5000"}).binds == ("unix:/tmp/x",)


def test_systemd_sockets_replace_the_default_bind() -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1"}
    assert parse_args(["m:app"], env).binds == ()
    assert parse_args(["m:app", "--port", "1"], env).binds == ("127.0.0.1:1",)
    other = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}
    assert parse_args(["m:app"], other).binds == ("127.0.0.1:8000",)


def test_environ_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAMISAMA_BACKLOG", "77")
    assert parse_args(["m:app"]).backlog == 77


# --------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the APP argument is required (MODULE:ATTRIBUTE), or set KAMISAMA_APP"),
        (["myapp"], "argument APP: 'myapp': expected MODULE:ATTRIBUTE"),
        (["m:app", "-w", "0"], "argument -w/--workers: must be at least 1, got 0"),
        (["m:app", "-w", "two"], "argument -w/--workers: expected a whole number, got 'two'"),
        (["m:app", "--timeout", "-1"], "argument --timeout: must be 0 or more seconds"),
        (["m:app", "--timeout", "nan"], "argument --timeout: expected a finite number"),
        (["m:app", "--header-timeout", "0"], "must be greater than 0 seconds"),
        (["m:app", "--interface", "rsgi"], "invalid choice 'rsgi' (choose from auto, asgi, wsgi)"),
        (["m:app", "--socket-mode", "both"], "(choose from reuseport, shared)"),
        (["m:app", "--log-level", "loud"], "argument --log-level: invalid choice 'loud'"),
        (["m:app", "-b", "localhost"], "argument -b/--bind: 'localhost': expected HOST:PORT"),
        (["m:app", "-b", "::1:80"], "an IPv6 address needs brackets"),
        (["m:app", "--port", "70000"], "argument --port: must be a port from 0 to 65535"),
        (["m:app", "--host", "a b"], "argument --host: not a host name or IP address"),
        (["m:app", "--host", "1:2:3"], "--host/--port: '[1:2:3]:8000': '1:2:3' is not an IPv6"),
        (["m:app", "-b", "127.0.0.1:1", "--port", "2"], "--bind and --host/--port cannot be"),
        (["m:app", "--forwarded-allow-ips", "proxy"], "'proxy' is not an IP address or network"),
        (["m:app", "--root-path", "api"], "argument --root-path: must start with '/'"),
        (["m:app", "--ssl-certfile", "/no/such.pem"], "no such file: '/no/such.pem'"),
        (["m:app", "--app-dir", "/no/such/dir"], "no such directory: '/no/such/dir'"),
        (["m:app", "--limit-request-line", "-1"], "must be at least 0, got -1"),
        (["m:app", "--limit-concurrency", "0"], "must be at least 1, got 0"),
        (["m:app", "--run", "hooks"], "argument --run: 'hooks': expected MODULE:ATTRIBUTE"),
        (["m:app", "--wrokers", "2"], "unrecognized arguments: --wrokers"),
        (["m:app", "--preload=1"], "ignored explicit argument '1'"),
    ],
)
def test_bad_values_are_usage_errors_with_a_clear_message(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert message in usage_error(capsys, argv, {})


def test_keyfile_without_certfile_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], pem: str
) -> None:
    err = usage_error(capsys, ["m:app", "--ssl-keyfile", pem], {})
    assert "--ssl-keyfile needs --ssl-certfile" in err


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KAMISAMA_WORKERS": "many"}, "environment variable KAMISAMA_WORKERS: expected a whole"),
        ({"KAMISAMA_PRELOAD": "maybe"}, "environment variable KAMISAMA_PRELOAD: expected one of"),
        ({"KAMISAMA_LIMIT_REQUEST_LINE": "-5"}, "KAMISAMA_LIMIT_REQUEST_LINE: must be at least 0"),
        ({"KAMISAMA_BIND": "127.0.0.1:1 nope"}, "KAMISAMA_BIND: 'nope': expected HOST:PORT"),
        ({"KAMISAMA_SOCKET_MODE": "x"}, "KAMISAMA_SOCKET_MODE: invalid choice 'x'"),
        ({"KAMISAMA_BIND": "127.0.0.1:1", "KAMISAMA_PORT": "2"},
         "environment KAMISAMA_BIND and KAMISAMA_HOST/KAMISAMA_PORT cannot be combined"),
        ({"WEB_CONCURRENCY": "0"}, "environment variable WEB_CONCURRENCY: must be at least 1"),
        ({"PORT": "http"}, "environment variable PORT: expected a whole number"),
        ({"KAMISAMA_APP": "nocolon"}, "environment variable KAMISAMA_APP: 'nocolon'"),
    ],
)  # fmt: skip
def test_a_bad_environment_value_is_one_line_naming_the_variable(
    capsys: pytest.CaptureFixture[str], env: dict[str, str], message: str
) -> None:
    """A deployment setting gone wrong: one line and exit 2, not the whole usage."""
    argv = [] if "KAMISAMA_APP" in env else ["m:app"]
    with pytest.raises(SystemExit) as info:
        parse_args(argv, env)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("kamisama-serve: error: environment ")
    assert err.count("\n") == 1
    assert message in err


def test_flags_are_taken_by_their_exact_names_only(capsys: pytest.CaptureFixture[str]) -> None:
    """uvicorn's `--header X:Y` must not become our `--header-timeout`."""
    err = usage_error(capsys, ["m:app", "--header", "X:Y"], {})
    assert "unrecognized arguments: --header X:Y" in err
    usage_error(capsys, ["m:app", "--work", "2"], {})


def test_server_header_and_proxy_header_flags() -> None:
    """Both default on (proxy headers trusted from 127.0.0.1 only); both can be turned off."""
    config = parse_args(["m:app"], {})
    assert (config.server_header, config.proxy_headers) == (True, True)
    assert config.forwarded_allow_ips == "127.0.0.1"
    config = parse_args(["m:app", "--no-server-header", "--no-proxy-headers"], {})
    assert (config.server_header, config.proxy_headers) == (False, False)
    config = parse_args(["m:app"], {"KAMISAMA_SERVER_HEADER": "off"})
    assert config.server_header is False


def test_a_bad_env_value_is_not_read_when_a_flag_overrides_it() -> None:
    """Flags win outright: a flag can override a broken deployment variable."""
    env = {"KAMISAMA_WORKERS": "many", "KAMISAMA_BIND": "nope", "KAMISAMA_PORT": "x"}
    config = parse_args(["m:app", "-w", "2", "--port", "1"], env)
    assert (config.workers, config.binds) == (2, ("127.0.0.1:1",))


# --------------------------------------------------------------------------- docs


def test_markdown_table_lists_every_option_with_env_and_default() -> None:
    table = flags_markdown()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows.pop(0) == "| Flag | Environment | Default | Description |"
    assert rows.pop(0) == "| --- | --- | --- | --- |"
    for option, row in zip(OPTIONS, rows, strict=True):
        assert f"`{option.env_name}`" in row
        assert option.default_doc.replace("|", "\\|") in row
        for flag in option.flags:
            assert flag in row
    assert "`--no-access-log`" in table
    assert "`-w N`, `--workers N`" in table


def test_markdown_table_from_the_command_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kamisama_server.config", "--markdown"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout == flags_markdown()
    bad = subprocess.run(
        [sys.executable, "-m", "kamisama_server.config"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "--markdown" in bad.stderr


def test_help_names_every_environment_variable() -> None:
    text = build_parser().format_help()
    for option in OPTIONS:
        assert option.env_name in text


def _documented(value: Any) -> set[str]:
    """How a default may be written in the table."""
    if isinstance(value, bool):
        return {"on"} if value else {"off"}
    if value is None:
        return {"none", "unlimited"}
    if value == "":
        return {"empty"}
    if isinstance(value, float | int):  # a large int as it is (16777216), not 1.67772e+07
        return {f"{value:g}", f"`{value:g}`", str(value), f"`{value}`"}
    return {str(value), f"`{value}`"}


def test_documented_defaults_are_the_real_defaults() -> None:
    fields = {f.name: f for f in dataclasses.fields(ServeConfig)}
    # documented in words
    dynamic = {"app", "app_dir", "binds", "workers", "socket_mode", "reload_dirs"}
    for option in OPTIONS:
        if option.dest in dynamic or option.dest not in fields:
            continue
        default = fields[option.dest].default
        assert option.default_doc in _documented(default), option.dest


def test_defaults_agree_with_the_http_engine() -> None:
    """ServeConfig feeds HttpConfig; the same name must mean the same default."""
    http_config = pytest.importorskip("kamisama_server.http.config")
    serve = ServeConfig(app="m:app")
    http = http_config.HttpConfig()
    shared = {f.name for f in dataclasses.fields(ServeConfig)} & {
        f.name for f in dataclasses.fields(http_config.HttpConfig)
    }
    assert {"limit_request_line", "keep_alive", "forwarded_allow_ips"} <= shared
    for name in sorted(shared):
        assert getattr(serve, name) == getattr(http, name), name


@pytest.mark.parametrize(
    ("cpu_max", "cap"),
    [("200000 100000", 2), ("150000 100000", 2), ("50000 100000", 1), ("max 100000", None)],
)
def test_default_workers_respect_a_container_cpu_quota(tmp_path, cpu_max, cap):
    from kamisama_server.config import _cpu_count

    path = tmp_path / "cpu.max"
    path.write_text(cpu_max + "\n")
    unlimited = _cpu_count(str(tmp_path / "missing"))
    assert _cpu_count(str(path)) == (min(unlimited, cap) if cap else unlimited)
