"""nginx as the physical reference: the same hello answered from its config, 2 workers.

Its req/s is about as much as this machine's loopback, kernel and wrk allow for this
request; our req/s as a fraction of it shows how much room is left.
"""

from __future__ import annotations

import shutil
from pathlib import Path

CONFIG = """\
worker_processes {workers};
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type text/plain;
            return 200 "Hello, world!";
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )


def command(tmp: Path, port: int, workers: int) -> list[str]:
    """Write a config into `tmp` and return the argv that runs nginx in the foreground."""
    binary = nginx_binary()
    if binary is None:
        raise FileNotFoundError("nginx is not installed (run.sh installs it with apt-get)")
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(CONFIG.format(workers=workers, tmp=tmp, port=port))
    return [binary, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)]
