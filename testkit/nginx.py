"""A real load balancer in front of several `softprobe serve` replicas: Debian's nginx, round robin.

It stands for the Kubernetes Service in front of k8s/overlays/postgres-backend: requests spread over
the replicas in turn, and a replica that refuses or resets a connection is skipped for the next one
(`proxy_next_upstream`, as kube-proxy stops routing to a pod that is gone). No replica is ever
marked down (`max_fails=0`): a refused connection on loopback costs nothing, and a replica
restarted where it was is used again at once, so a rolling restart never finds every replica
marked down at the moment the second one stops. Exports are retried on the
next replica too (`non_idempotent`): a span's id is unique in the store, so a retried export is
recorded once.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

from testkit.support import LOOPBACK, free_port, wait_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

_CONFIG = """\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_max_body_size 64m;
    # Bodies and answers in memory, never in temporary files: started as root (CI), nginx's worker
    # runs as nobody, who may not write under `prefix`, and a buffered body it cannot write is a 500.
    client_body_buffer_size 64m;
    proxy_max_temp_file_size 0;
    proxy_request_buffering on;
    upstream runtime {{
{servers}
        keepalive 16;
    }}
    server {{
        listen {host}:{port};
        location / {{
            proxy_pass http://runtime;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout http_502 non_idempotent;
            proxy_next_upstream_tries 3;
            proxy_connect_timeout 2s;
            proxy_read_timeout 30s;
        }}
    }}
}}
"""


class LoadBalancer:
    """nginx on a free loopback port, round robin over `upstreams` (`host:port` each)."""

    def __init__(self, prefix: Path, upstreams: list[str]) -> None:
        prefix.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.url = f"http://{LOOPBACK}:{port}"
        servers = "\n".join(f"        server {u} max_fails=0;" for u in upstreams)
        config = prefix / "nginx.conf"
        config.write_text(_CONFIG.format(prefix=prefix, servers=servers, host=LOOPBACK, port=port))
        self.log = prefix / "error.log"
        # `user` is ignored unless nginx starts as root; then its worker runs as nobody, who reads nothing here.
        self.process = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(config), "-g", "daemon off;"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_port(port)
        except Exception:
            self.process.kill()
            raise AssertionError(f"nginx did not start: {self.process.communicate()[1].decode()}") from None

    def stop(self) -> None:
        self.process.send_signal(signal.SIGQUIT)  # nginx's graceful stop
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> LoadBalancer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
