"""deploy/ and the Dockerfile, checked as far as this machine allows: hadolint, the
Kubernetes schemas (kubernetes-validate), the numbers the README explains, the
HEALTHCHECK run against a live server, and a real nginx in front of a Unix socket
(when nginx is installed). There is no Docker engine nor cluster here."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from processes import REPO, GroupProcess, wait_until
from serve_support import Server, StartServer, free_port, serving
from test_examples import KAMISAMA_SERVE, dockerfile_cmd, dockerfile_env, dockerfile_instructions

from kamisama_server.testing import ServerFactory

BIN = Path(sys.executable).parent
MANIFEST = REPO / "deploy" / "kubernetes.yaml"
README = (REPO / "README.md").read_text()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServer]:
    yield from serving(tmp_path)


def tool(name: str) -> str:
    """A console script of the test extras, next to this Python."""
    path = BIN / name
    assert path.exists(), f"{name} is missing: pip install -e '.[test]'"
    return str(path)


# --------------------------------------------------------------------------- Dockerfile


def test_hadolint_passes_the_dockerfile() -> None:
    lint = subprocess.run(
        [tool("hadolint"), "--no-color", "Dockerfile"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


def build_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    second_from = [i for i, (name, _) in enumerate(instructions) if name == "FROM"][1]
    return instructions[:second_from]


def test_dependencies_are_installed_in_a_layer_that_only_pyproject_changes() -> None:
    stage = build_stage()
    copies = [(i, args) for i, (name, args) in enumerate(stage) if name == "COPY"]
    installs = [
        (i, args) for i, (name, args) in enumerate(stage) if name == "RUN" and "pip" in args
    ]
    assert copies[0][1].split()[:-1] == ["pyproject.toml"]
    first_install, deps = installs[0]
    assert copies[0][0] < first_install < copies[1][0]  # before any source is copied
    assert ".[uvloop]" in deps
    source_install = installs[-1][1]
    assert installs[-1][0] > max(i for i, _ in copies)
    assert "--no-deps" in source_install


def test_the_stale_cpu_comment_now_says_what_the_code_does() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "does not see a `--cpus` quota" not in text
    assert "cpu.max" in text


def healthcheck_command() -> list[str]:
    (arguments,) = [args for name, args in dockerfile_instructions() if name == "HEALTHCHECK"]
    command = json.loads(arguments.split(" CMD ", 1)[1])  # exec form: no shell needed
    assert isinstance(command, list)
    return [str(part) for part in command]


def test_healthcheck_needs_no_curl_and_tells_up_from_down(
    kamisama_server_factory: ServerFactory,
) -> None:
    """The HEALTHCHECK's own command, run against the image's CMD and against nothing."""
    command = healthcheck_command()
    assert command[0] == "python" and not {"curl", "wget"} & set(" ".join(command).split())
    cmd = dockerfile_cmd()
    env = {k: v for k, v in dockerfile_env().items() if k not in ("PATH", "PORT")}
    server = kamisama_server_factory(
        cmd[1], workers=2, command=[str(KAMISAMA_SERVE)], args=cmd[2:], env=env, cwd=REPO
    )

    def check(port: int) -> int:
        argv = [sys.executable, *command[1:]]
        env = {**os.environ, "PORT": str(port)}
        return subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode

    assert check(server.port) == 0
    assert check(free_port()) != 0
    assert server.stop(signal.SIGTERM) == 0
    assert server.stderr.count(" shut down\n") == 2  # the drain `docker logs` shows


# --------------------------------------------------------------------------- Kubernetes


def manifests() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc}


def container() -> dict[str, Any]:
    (web,) = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return dict(web)


def container_env() -> dict[str, str]:
    return {item["name"]: item["value"] for item in container()["env"]}


def test_manifests_pass_the_kubernetes_schemas() -> None:
    check = subprocess.run(
        [tool("kubernetes-validate"), "--strict", str(MANIFEST)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count("passed") == 2, check.stdout


def test_grace_period_covers_the_shutdown_delay_plus_the_drain() -> None:
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    env = container_env()
    delay, timeout = float(env["KAMISAMA_SHUTDOWN_DELAY"]), float(env["KAMISAMA_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] > delay + timeout
    assert (delay, timeout, pod["terminationGracePeriodSeconds"]) == (5, 20, 30)  # README's


def test_workers_match_the_cpu_limit() -> None:
    resources = container()["resources"]
    assert container_env()["WEB_CONCURRENCY"] == resources["limits"]["cpu"] == "2"
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"]


def test_probes_ask_the_app_on_the_served_port_and_a_tcp_variant_is_given() -> None:
    web = container()
    (port,) = web["ports"]
    assert str(port["containerPort"]) == container_env()["PORT"] == dockerfile_env()["PORT"]
    for probe in (web["readinessProbe"], web["livenessProbe"]):
        assert probe["httpGet"] == {"path": "/", "port": port["name"]}
    # The commented variant is valid YAML once uncommented, and probes the same port.
    block = re.search(r"^( +)# readinessProbe:\n(?:\1#.*\n)+", MANIFEST.read_text(), re.M)
    assert block is not None
    lines = [line.strip()[1:] for line in block[0].splitlines()]
    variant = yaml.safe_load(
        "\n".join(line[1:] if line.startswith(" ") else line for line in lines)
    )
    for name in ("readinessProbe", "livenessProbe"):
        assert variant[name]["tcpSocket"] == {"port": port["name"]}
    service = manifests()["Service"]["spec"]
    assert service["ports"][0]["targetPort"] == port["name"]
    assert service["selector"] == manifests()["Deployment"]["spec"]["selector"]["matchLabels"]


def test_runs_as_the_images_non_root_user_with_a_writable_tmp_only() -> None:
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    (user,) = [args for name, args in dockerfile_instructions() if name == "USER"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}" == user
    web = container()["securityContext"]
    assert web["readOnlyRootFilesystem"] and not web["allowPrivilegeEscalation"]
    assert web["capabilities"]["drop"] == ["ALL"]
    assert container()["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]


def test_the_manifests_environment_serves_the_image_cmd(
    kamisama_server_factory: ServerFactory, tmp_path: Path
) -> None:
    """Every KAMISAMA_* value in the manifest is one the server accepts (on 127.0.0.1)."""
    env = {k: v for k, v in container_env().items() if k != "PORT"}
    env["TMPDIR"] = str(tmp_path)  # the pod's /tmp emptyDir
    cmd = dockerfile_cmd()
    server = kamisama_server_factory(
        cmd[1], workers=None, command=[str(KAMISAMA_SERVE)], args=cmd[2:], env=env, cwd=REPO
    )
    assert server.workers == int(env["WEB_CONCURRENCY"])
    assert httpx.get(server.url + container()["readinessProbe"]["httpGet"]["path"]).is_success


# --------------------------------------------------------------------------- nginx


def readme_unix_command() -> list[str]:
    deploying = README.split("## Deploying", 1)[1].split("\n## ", 1)[0]
    (line,) = re.findall(r"^kamisama-serve .* --bind unix:\S+$", deploying, re.M)
    return shlex.split(line)


def nginx_main(directory: Path) -> str:
    """A foreground nginx whose every file is in ``directory``, including our conf."""
    temp = "".join(
        f"    {kind}_temp_path {directory}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"daemon off;\nmaster_process off;\npid {directory}/nginx.pid;\n"
        f"error_log {directory}/error.log info;\nevents {{ worker_connections 64; }}\n"
        f"http {{\n    access_log off;\n{temp}    include {directory}/kamisama.conf;\n}}\n"
    )


ENV_APP = """
    import json

    def app(environ, start_response):
        keys = ("REMOTE_ADDR", "wsgi.url_scheme", "HTTP_HOST")
        body = json.dumps({k: environ.get(k) for k in keys}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
"""


@pytest.fixture
def nginx_in_front(tmp_path: Path, serve: StartServer) -> Iterator[tuple[Server, int]]:
    """deploy/nginx.conf in a real nginx (on 127.0.0.1) in front of the README's command."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    socket_path = tmp_path / "app.sock"
    argv = readme_unix_command()
    assert argv[1] == "examples.flask_app.app:app"
    argv = [argv[0], "app:app", *argv[2:]]
    argv[argv.index("--bind") + 1] = f"unix:{socket_path}"
    server = serve([*argv[1:], "-w", "2"], modules={"app": ENV_APP})
    server.wait_listening()
    port = free_port()
    conf = (REPO / "deploy" / "nginx.conf").read_text()
    conf = conf.replace("unix:/run/kamisama/app.sock", f"unix:{socket_path}")
    conf = conf.replace("listen 80;", f"listen 127.0.0.1:{port};")
    directory = tmp_path / "nginx"
    directory.mkdir()
    (directory / "kamisama.conf").write_text(conf)
    (directory / "nginx.conf").write_text(nginx_main(directory))
    proxy = GroupProcess(directory, [nginx, "-p", str(directory), "-c", "nginx.conf"], {})
    try:

        def up() -> bool:
            assert proxy.process.poll() is None, proxy.output()
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        wait_until(up, 10, "nginx listening")
        yield server, port
    finally:
        proxy.cleanup()


def test_nginx_conf_proxies_to_the_unix_socket_and_the_app_sees_the_client(
    nginx_in_front: tuple[Server, int],
) -> None:
    _, port = nginx_in_front
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        seen = client.get("/").json()
        # Over the Unix socket the server has no peer address: these came from nginx.
        assert seen == {
            "REMOTE_ADDR": "127.0.0.1",
            "wsgi.url_scheme": "http",
            "HTTP_HOST": "127.0.0.1",
        }
        chained = client.get("/", headers={"X-Forwarded-For": "203.0.113.9"}).json()
        assert chained["REMOTE_ADDR"] == "203.0.113.9"  # the client 127.0.0.1 is trusted too
