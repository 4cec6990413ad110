"""A real HAProxy (Debian's) on a free loopback port in front of gateway replicas (tests, bench).

The config is deploy/haproxy.cfg's shape: round robin (or least connections), `/health` checks every
500 ms (a replica that refuses connections is out after two; a slow answer is not a failure for 5 s),
WebSocket-friendly timeouts (`timeout tunnel`), a connection refused retried on another replica
(`redispatch`; never a request a replica already received), `/internal/` refused from outside.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from harness.procs import free_port, start, stop, wait_until

TEMPLATE = """global
    maxconn 4096
defaults
    mode http
    option http-server-close
    timeout connect 2s
    timeout check 5s
    retries 2
    option redispatch
    timeout client 300s
    timeout server 300s
    timeout tunnel 1h
    timeout http-keep-alive 30s
frontend gateway
    bind 127.0.0.1:{port}
    http-request deny deny_status 403 if {{ path_beg /internal/ }}
    default_backend replicas
backend replicas
    balance {balance}
    option httpchk GET /health
    http-check expect status 200
    default-server inter 500ms fall 2 rise 1
{servers}
"""


class HAProxy:
    def __init__(self, dir: Path, replicas: list[str], port: int | None = None,  # noqa: A002
                 balance: str = "roundrobin") -> None:
        """`replicas`: their base URLs (http://127.0.0.1:PORT)."""
        self.dir = Path(dir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.replicas = replicas
        self.balance = balance
        self.proc: subprocess.Popen | None = None

    def config(self) -> str:
        servers = "\n".join(f"    server r{i} {url.split('://', 1)[1].rstrip('/')} check"
                            for i, url in enumerate(self.replicas))
        return TEMPLATE.format(port=self.port, balance=self.balance, servers=servers)

    def start(self) -> "HAProxy":
        program = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(program).exists():
            raise RuntimeError("haproxy is not installed (Debian: apt-get install haproxy)")
        self.dir.mkdir(parents=True, exist_ok=True)
        cfg = self.dir / "haproxy.cfg"
        cfg.write_text(self.config())
        log = self.dir / "haproxy.log"
        self.proc = start([program, "-f", str(cfg), "-db"], log, program=None)
        import httpx

        wait_until(lambda: httpx.get(f"{self.url}/health", timeout=2).status_code == 200 or
                   self.proc.poll() is not None, 20, "HAProxy answering")
        if self.proc.poll() is not None:
            raise RuntimeError(f"haproxy exited:\n{log.read_text()[-2000:]}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, timeout=5)
            self.proc = None

    def __enter__(self) -> "HAProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
