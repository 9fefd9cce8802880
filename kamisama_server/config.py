"""``kamisama-serve``'s options: flags, ``KAMISAMA_*`` environment, defaults.

One table (``OPTIONS``) describes every option once; the argparse parser, the
environment lookup and the README's flags table are all made from it, so they
cannot disagree. Precedence, highest first: command-line flag,
``KAMISAMA_<FLAG>``, the conventional variable where there is one
(``WEB_CONCURRENCY``, ``PORT``), the default.

``python -m kamisama_server.config --markdown`` prints the flags table.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

from kamisama_server.http.access import DEFAULT_ACCESS_FORMAT, check_format
from kamisama_server.loader import parse_app_spec
from kamisama_server.sockets import (
    DEFAULT_BACKLOG,
    SOCKET_MODES,
    SocketMode,
    default_socket_mode,
    format_host_port,
    parse_bind,
    systemd_listen_fds,
)
from kamisama_server.version import VERSION, engine_build

ENV_PREFIX = "KAMISAMA_"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``kamisama-serve`` was asked to do; built by :func:`parse_args`.

    Request limits use gunicorn's names and meaning: 0 means unlimited for the
    line and field limits; ``limit_request_body`` is ``None`` when unlimited.
    """

    app: str
    factory: bool = False
    app_dir: str = field(default_factory=os.getcwd)
    interface: Literal["auto", "asgi", "wsgi"] = "auto"
    # Empty only when systemd handed us sockets and no bind was given.
    binds: tuple[str, ...] = (f"{DEFAULT_HOST}:{DEFAULT_PORT}",)
    workers: int = 1
    timeout: float = 10.0
    request_timeout: float = 30.0
    threads: int = 1
    backlog: int = DEFAULT_BACKLOG
    socket_mode: SocketMode = field(default_factory=default_socket_mode)
    keep_alive: float = 5.0
    header_timeout: float = 10.0
    stall_timeout: float = 30.0
    http_parser: Literal["auto", "httptools", "h11"] = "auto"
    limit_concurrency: int | None = None
    proxy_headers: bool = True
    forwarded_allow_ips: str = "127.0.0.1"
    server_header: bool = True
    root_path: str = ""
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    access_log: bool = False
    log_level: str = "info"
    log_config: str | None = None
    access_log_format: str = DEFAULT_ACCESS_FORMAT
    preload: bool = False
    limit_request_line: int = 8190
    limit_request_fields: int = 100
    limit_request_field_size: int = 8190
    limit_request_body: int | None = None
    ws_max_size: int = 16 * 1024 * 1024
    run_hook: str | None = None
    shutdown_hook: str | None = None
    max_requests: int = 0
    max_requests_jitter: int = 0
    shutdown_delay: float = 0.0
    pid_file: str | None = None
    unix_socket_mode: int | None = None
    reload: bool = False
    reload_dirs: tuple[str, ...] = ()


# --------------------------------------------------------------------------- value parsers
# Each turns one string (from argv or the environment) into a value, or raises
# argparse.ArgumentTypeError with a message that reads well after the flag name.

Parse = Callable[[str], Any]


def _int(minimum: int, what: str = "") -> Parse:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}{what}, got {value}")
        return value

    return parse


def _seconds(*, positive: bool) -> Parse:
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"expected a finite number of seconds, got {text!r}")
        if value < 0 or (positive and value == 0):
            bound = "greater than 0" if positive else "0 or more"
            raise argparse.ArgumentTypeError(f"must be {bound} seconds, got {text!r}")
        return value

    return parse


def _choice(choices: Sequence[str]) -> Parse:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise argparse.ArgumentTypeError(
                f"invalid choice {text!r} (choose from {', '.join(choices)})"
            )
        return value

    return parse


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected one of {'/'.join(_TRUE + _FALSE)}, got {text!r}")


def _module_attr(text: str) -> str:
    try:
        parse_app_spec(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


def _bind(text: str) -> str:
    try:
        return parse_bind(text).text
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _host(text: str) -> str:
    host = text.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(c.isspace() or c in "[]/" for c in host):
        raise argparse.ArgumentTypeError(f"not a host name or IP address: {text!r}")
    return host


def _port(text: str) -> int:
    value = _int(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 0 to 65535, got {value}")
    return int(value)


def _allow_ips(text: str) -> str:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected comma-separated IPs or networks, or *")
    for item in items:
        if item == "*":
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not an IP address or network (e.g. 10.0.0.0/8), or *"
            ) from None
    return ",".join(items)


def _root_path(text: str) -> str:
    value = text.strip().rstrip("/")
    if value and not value.startswith("/"):
        raise argparse.ArgumentTypeError(f"must start with '/', got {text!r}")
    return value


def _existing_file(text: str) -> str:
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return text


def _access_format(text: str) -> str:
    try:
        return check_format(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _octal_mode(text: str) -> int:
    try:
        value = int(text.strip(), 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an octal mode (0660), got {text!r}") from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"expected permission bits 000 to 777, got {text!r}")
    return value


def _app_dir(text: str) -> str:
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"no such directory: {text!r}")
    return os.path.abspath(text)


# --------------------------------------------------------------------------- the table


Kind = Literal["value", "bool", "append", "positional"]


@dataclass(frozen=True)
class Option:
    """One option of the CLI: its flags, how to read it, its default as documented."""

    dest: str
    flags: tuple[str, ...]
    help: str
    default_doc: str
    parse: Parse
    kind: Kind = "value"
    metavar: str | None = None
    env: str | None = None  # overrides KAMISAMA_<DEST>

    @property
    def env_name(self) -> str:
        return self.env or ENV_PREFIX + self.dest.upper()


OPTIONS: tuple[Option, ...] = (
    Option("app", ("APP",), "The app, `module:attr` (dotted attribute allowed).",
           "required", _module_attr, "positional", "APP"),
    Option("factory", ("--factory",), "APP is a factory: call it with no arguments to get the app.",
           "off", _bool, "bool"),
    Option("app_dir", ("--app-dir",), "Directory put first on `sys.path` to import APP from.",
           "current directory", _app_dir, metavar="DIR"),
    Option("interface", ("--interface",),
           "App interface; `auto` detects ASGI (an async callable) or else WSGI.",
           "auto", _choice(("auto", "asgi", "wsgi")), metavar="auto|asgi|wsgi"),
    Option("binds", ("-b", "--bind"),
           "Listen on `HOST:PORT`, `[IPv6]:PORT`, `unix:PATH` or `fd://N`; repeatable "
           "(environment: separated by spaces or commas). Port 0 picks a free port.",
           "`127.0.0.1:8000`, or `0.0.0.0:$PORT` when `PORT` is set", _bind, "append",
           "ADDRESS", env="KAMISAMA_BIND"),
    Option("host", ("--host",), "Shorthand for `--bind HOST:PORT` (with `--port`).",
           "`127.0.0.1` (`0.0.0.0` when `PORT` is set)", _host),
    Option("port", ("--port",), "Shorthand for `--bind HOST:PORT` (with `--host`).",
           "`8000` (`$PORT` when set)", _port),
    Option("workers", ("-w", "--workers"), "Number of worker processes.",
           "`WEB_CONCURRENCY`, else the number of CPUs", _int(1), metavar="N"),
    Option("timeout", ("--timeout",),
           "Graceful shutdown: seconds a worker gets to drain before it is killed "
           "(gunicorn's `--timeout` is our `--request-timeout`).",
           "10", _seconds(positive=False), metavar="SECONDS"),
    Option("request_timeout", ("--request-timeout",),
           "Hung-request watchdog: a WSGI app call, or one step of its response, running "
           "longer than this is answered 503 (its connection closed if the head went out) "
           "and its worker replaced; a worker whose event loop is stuck this long is "
           "replaced too. 0 = off.",
           "30", _seconds(positive=False), metavar="SECONDS"),
    Option("threads", ("--threads",), "Threads per worker running WSGI app calls.",
           "1", _int(1), metavar="N"),
    Option("backlog", ("--backlog",), "Listen queue length of each socket.",
           str(DEFAULT_BACKLOG), _int(1), metavar="N"),
    Option("socket_mode", ("--socket-mode",),
           "`reuseport`: one SO_REUSEPORT socket per worker, balanced by the kernel; "
           "`shared`: one socket accepted on by all workers.",
           "`shared`", _choice(SOCKET_MODES),
           metavar="|".join(SOCKET_MODES)),
    Option("keep_alive", ("--keep-alive",), "Seconds an idle keep-alive connection stays open.",
           "5", _seconds(positive=False), metavar="SECONDS"),
    Option("header_timeout", ("--header-timeout",),
           "Seconds a client has to send a complete request head (else 408).",
           "10", _seconds(positive=True), metavar="SECONDS"),
    Option("stall_timeout", ("--stall-timeout",),
           "Seconds a connection may make no progress while its request body is read or "
           "its response written (the client not reading) before it is closed; 0 = off.",
           "30", _seconds(positive=False), metavar="SECONDS"),
    Option("http_parser", ("--http-parser",),
           "Request parser: `httptools`, `h11` (the pure-Python fallback), or `auto` "
           "(httptools where it is installed).",
           "auto", _choice(("auto", "httptools", "h11")), metavar="auto|httptools|h11"),
    Option("limit_concurrency", ("--limit-concurrency",),
           "Requests in flight per worker; more are answered 503.",
           "unlimited", _int(1), metavar="N"),
    Option("proxy_headers", ("--proxy-headers",),
           "Trust `X-Forwarded-For`/`-Proto` (and `Forwarded`) from `--forwarded-allow-ips` "
           "(as gunicorn and uvicorn do); `--no-proxy-headers` ignores them from everyone.",
           "on", _bool, "bool"),
    Option("forwarded_allow_ips", ("--forwarded-allow-ips",),
           "Comma-separated IPs or networks whose proxy headers are trusted, or `*` "
           "(a peer on a Unix socket, such as a local nginx, always is).",
           "`127.0.0.1`", _allow_ips, metavar="IPS"),
    Option("server_header", ("--server-header",),
           "Send a `server: kamisama` header (unless the app sets its own `Server`).",
           "on", _bool, "bool"),
    Option("root_path", ("--root-path",),
           "Path prefix the app is mounted at (ASGI `root_path`, WSGI `SCRIPT_NAME`).",
           "empty", _root_path, metavar="PATH"),
    Option("ssl_certfile", ("--ssl-certfile",), "TLS certificate file (PEM); enables HTTPS.",
           "none", _existing_file, metavar="FILE"),
    Option("ssl_keyfile", ("--ssl-keyfile",), "TLS private key file (PEM).",
           "none", _existing_file, metavar="FILE"),
    Option("access_log", ("--access-log",),
           "Log one line per request on stdout (costs ~70% more CPU on a hello route).",
           "off", _bool, "bool"),
    Option("access_log_format", ("--access-log-format",),
           "Access line, with gunicorn's atoms: `%(h)s` client, `%(t)s` time, `%(r)s` "
           "request line, `%(s)s` status, `%(b)s` body bytes, `%(D)s` microseconds, "
           "`%(L)s` seconds, `%(a)s` user agent, `%({header}i)s` a request header, and more.",
           f"`{DEFAULT_ACCESS_FORMAT}`", _access_format, metavar="FORMAT"),
    Option("log_level", ("--log-level",),
           "Level of every `kamisama` logger: master and worker events, errors, access.",
           "info", _choice(LOG_LEVELS), metavar="|".join(LOG_LEVELS)),
    Option("log_config", ("--log-config",),
           "Logging config file replacing ours: `dictConfig` as JSON, or an `.ini` for "
           "`fileConfig`; `--log-level` then does not apply.",
           "none", _existing_file, metavar="FILE"),
    Option("preload", ("--preload",), "Import the app in the master, before forking workers.",
           "off", _bool, "bool"),
    Option("limit_request_line", ("--limit-request-line",),
           "Longest request line in bytes, else 414; 0 = unlimited.",
           "8190", _int(0), metavar="BYTES"),
    Option("limit_request_fields", ("--limit-request-fields",),
           "Most header fields in a request, else 431; 0 = unlimited.",
           "100", _int(0), metavar="N"),
    Option("limit_request_field_size", ("--limit-request-field-size",),
           "Largest header field in bytes, else 431; 0 = unlimited.",
           "8190", _int(0), metavar="BYTES"),
    Option("limit_request_body", ("--limit-request-body",),
           "Largest request body in bytes, else 413; 0 = unlimited.",
           "unlimited", _int(0), metavar="BYTES"),
    Option("ws_max_size", ("--ws-max-size",),
           "Largest WebSocket message in bytes, its fragments together; a bigger one "
           "closes the connection (1009).",
           "16777216", _int(1), metavar="BYTES"),
    Option("run_hook", ("--run",),
           "`module:func` called with the worker id in each worker before it serves.",
           "none", _module_attr, metavar="MODULE:FUNC", env="KAMISAMA_RUN"),
    Option("shutdown_hook", ("--shutdown",),
           "`module:func` called with the worker id and signal name after the drain "
           "(sync or async).",
           "none", _module_attr, metavar="MODULE:FUNC", env="KAMISAMA_SHUTDOWN"),
    Option("max_requests", ("--max-requests",),
           "Recycle a worker after it answered this many requests (a successor starts "
           "first, then it drains, as with SIGUSR1); bounds what a leaking app grows to. "
           "0 = never.",
           "0", _int(0), metavar="N"),
    Option("max_requests_jitter", ("--max-requests-jitter",),
           "Each worker draws its own limit in [N, N+J], so workers do not recycle "
           "together; needs `--max-requests`.",
           "0", _int(0), metavar="J"),
    Option("shutdown_delay", ("--shutdown-delay",),
           "Lame duck: after a shutdown signal keep accepting and serving this long, "
           "then drain (covers a load balancer still routing to us, e.g. Kubernetes "
           "endpoints).",
           "0", _seconds(positive=False), metavar="SECONDS"),
    Option("pid_file", ("--pid",),
           "Write the master's pid to FILE once listening; removed at exit; refused "
           "(exit 4) if FILE names a live process.",
           "none", str, metavar="FILE"),
    Option("unix_socket_mode", ("--unix-socket-mode",),
           "Permission bits (octal) of every `unix:` socket, e.g. `0660` for a proxy "
           "in the same group; none: the umask decides.",
           "none", _octal_mode, metavar="MODE"),
    Option("reload", ("--reload",),
           "Development: replace the workers when a `.py` file changes under "
           "`--reload-dir` (needs `kamisama-server[reload]`).",
           "off", _bool, "bool"),
    Option("reload_dirs", ("--reload-dir",),
           "Directory `--reload` watches; repeatable.",
           "the app directory", _app_dir, "append", "DIR"),
)  # fmt: skip

_BY_DEST = {option.dest: option for option in OPTIONS}


# --------------------------------------------------------------------------- parsing


def build_parser(prog: str = "kamisama-serve") -> argparse.ArgumentParser:
    """The argparse parser; every default is ``None`` so "not given" is visible."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve a WSGI or ASGI app with pre-forked worker processes.",
        epilog="Every option can also be set as KAMISAMA_<OPTION> in the environment, "
        "e.g. KAMISAMA_WORKERS=4; command-line flags win.",
        argument_default=None,
        # Exact flag names only: a prefix match would take uvicorn's `--header X:Y`
        # as our `--header-timeout`.
        allow_abbrev=False,
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {VERSION} (engine: {engine_build()})"
    )
    for option in OPTIONS:
        help_text = f"{option.help} Default: {option.default_doc}. Env: {option.env_name}."
        help_text = help_text.replace("`", "").replace("%", "%%")
        if option.kind == "positional":
            parser.add_argument(
                option.dest, nargs="?", type=option.parse, metavar=option.metavar, help=help_text
            )
        elif option.kind == "bool":
            parser.add_argument(
                *option.flags,
                dest=option.dest,
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
        elif option.kind == "append":
            parser.add_argument(
                *option.flags,
                dest=option.dest,
                action="append",
                type=option.parse,
                metavar=option.metavar,
                help=help_text,
            )
        else:
            parser.add_argument(
                *option.flags,
                dest=option.dest,
                type=option.parse,
                metavar=option.metavar,
                help=help_text,
            )
    return parser


def _from_env(parser: argparse.ArgumentParser, option: Option, environ: Mapping[str, str]) -> Any:
    """The option's value from ``KAMISAMA_<FLAG>``, or None when unset or empty."""
    raw = environ.get(option.env_name, "")
    if not raw.strip():
        return None
    try:
        if option.kind == "append":
            return [option.parse(item) for item in re.split(r"[\s,]+", raw.strip())]
        return option.parse(raw)
    except argparse.ArgumentTypeError as exc:
        _env_error(parser, option.env_name, exc)


def _env_error(parser: argparse.ArgumentParser, name: str, exc: Exception) -> NoReturn:
    """One line naming the variable, exit 2: the usage is no help for a deployment setting."""
    parser.exit(2, f"{parser.prog}: error: environment variable {name}: {exc}\n")


def _conventional(
    parser: argparse.ArgumentParser, name: str, parse: Parse, environ: Mapping[str, str]
) -> Any:
    """A platform convention variable (``PORT``, ``WEB_CONCURRENCY``), or None."""
    raw = environ.get(name, "")
    if not raw.strip():
        return None
    try:
        return parse(raw)
    except argparse.ArgumentTypeError as exc:
        _env_error(parser, name, exc)


def _cpu_count(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """CPUs this process may use: affinity, capped by a cgroup v2 CPU quota.

    In a container limited with ``--cpus 2`` on a 32-core host, the affinity
    still says 32; the quota (``cpu.max``: "200000 100000") says 2.
    """
    if hasattr(os, "process_cpu_count"):  # Python 3.13+
        count: int | None = os.process_cpu_count()
    elif hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0))
    else:
        count = os.cpu_count()
    count = max(1, count or 1)
    quota = _cgroup_cpu_quota(cpu_max)
    return min(count, quota) if quota else count


def _cgroup_cpu_quota(path: str) -> int | None:
    """Whole CPUs allowed by a cgroup v2 ``cpu.max`` file (rounded up), or None."""
    try:
        with open(path) as file:
            quota, _, period = file.read().strip().partition(" ")
        if quota == "max":
            return None
        return max(1, math.ceil(int(quota) / int(period or "100000")))
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _binds(
    parser: argparse.ArgumentParser,
    cli: dict[str, Any],
    env: dict[str, Any],
    environ: Mapping[str, str],
) -> tuple[str, ...]:
    """Where to listen: flags, then KAMISAMA_BIND/HOST/PORT, then systemd, PORT, default."""
    for source, values, names in (
        ("", cli, ("--bind", "--host/--port")),
        ("environment ", env, ("KAMISAMA_BIND", "KAMISAMA_HOST/KAMISAMA_PORT")),
    ):
        binds, host, port = values["binds"], values["host"], values["port"]
        if binds and (host is not None or port is not None):
            message = f"{names[0]} and {names[1]} cannot be combined; use one"
            if source:
                parser.exit(2, f"{parser.prog}: error: environment {message}\n")
            parser.error(message)
        if binds:
            return tuple(binds)
        if host is not None or port is not None:
            return (_host_port(parser, host, port, environ),)
    if systemd_listen_fds(environ):
        return ()
    return (_host_port(parser, None, None, environ),)


def _host_port(
    parser: argparse.ArgumentParser, host: str | None, port: int | None, environ: Mapping[str, str]
) -> str:
    env_port = _conventional(parser, "PORT", _port, environ)
    if host is None:
        host = "0.0.0.0" if env_port is not None else DEFAULT_HOST
    if port is None:
        port = env_port if env_port is not None else DEFAULT_PORT
    spec = format_host_port(host, port)
    try:
        parse_bind(spec)
    except ValueError as exc:
        parser.error(f"--host/--port: {exc}")
    return spec


def parse_args(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    prog: str = "kamisama-serve",
) -> ServeConfig:
    """Build the :class:`ServeConfig` from flags and environment.

    Usage errors (bad flag, bad value, bad environment value) print the usage
    and a message naming the flag or variable, and raise ``SystemExit(2)``.
    """
    env_map: Mapping[str, str] = os.environ if environ is None else environ
    parser = build_parser(prog)
    namespace = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    cli: dict[str, Any] = vars(namespace)
    # Flags win: an environment variable is only read (and validated) when its
    # flag is absent, so a flag can override a broken deployment setting.
    cli_binds = any(cli[dest] is not None for dest in ("binds", "host", "port"))
    env: dict[str, Any] = {
        o.dest: None
        if cli[o.dest] is not None or (cli_binds and o.dest in ("binds", "host", "port"))
        else _from_env(parser, o, env_map)
        for o in OPTIONS
    }

    def pick(dest: str) -> Any:
        return cli[dest] if cli[dest] is not None else env[dest]

    values: dict[str, Any] = {}
    for option in OPTIONS:
        if option.dest in ("binds", "host", "port"):
            continue
        value = pick(option.dest)
        if value is not None:
            values[option.dest] = value

    if "app" not in values:
        parser.error("the APP argument is required (MODULE:ATTRIBUTE), or set KAMISAMA_APP")
    if "workers" not in values:
        values["workers"] = _conventional(parser, "WEB_CONCURRENCY", _int(1), env_map)
        if values["workers"] is None:
            values["workers"] = _cpu_count()
    if values.get("limit_request_body") == 0:
        values["limit_request_body"] = None
    if values.get("ssl_keyfile") and not values.get("ssl_certfile"):
        parser.error("--ssl-keyfile needs --ssl-certfile")
    if values.get("max_requests_jitter") and not values.get("max_requests"):
        parser.error("--max-requests-jitter needs --max-requests")
    if "reload_dirs" in values:
        values["reload_dirs"] = tuple(values["reload_dirs"])
    values["binds"] = _binds(parser, cli, env, env_map)
    return ServeConfig(**values)


# --------------------------------------------------------------------------- docs


def _flags_cell(option: Option) -> str:
    if option.kind == "positional":
        return f"`{option.metavar}`"
    flags = ", ".join(
        f"`{flag} {option.metavar or option.dest.upper()}`"
        if option.kind != "bool"
        else f"`{flag}`"
        for flag in option.flags
    )
    if option.kind == "bool":
        flags += f", `--no-{option.flags[-1][2:]}`"
    return flags


def _env_cell(option: Option) -> str:
    cell = f"`{option.env_name}`"
    if option.dest == "workers":
        cell += ", `WEB_CONCURRENCY`"
    if option.dest in ("binds", "port"):
        cell += ", `PORT`"
    return cell


def flags_markdown() -> str:
    """The README's table of flags: flag, environment variable, default, meaning."""
    lines = [
        "| Flag | Environment | Default | Description |",
        "| --- | --- | --- | --- |",
    ]
    for option in OPTIONS:
        cells = (_flags_cell(option), _env_cell(option), option.default_doc, option.help)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines.append("")
    lines.append(
        "Booleans from the environment accept `1/true/yes/on` and `0/false/no/off`. "
        "Precedence: flag, then `KAMISAMA_*`, then `WEB_CONCURRENCY`/`PORT`, then the default."
    )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kamisama_server.config --markdown``: print the flags table."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args != ["--markdown"]:
        print("usage: python -m kamisama_server.config --markdown", file=sys.stderr)
        return 2
    sys.stdout.write(flags_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
