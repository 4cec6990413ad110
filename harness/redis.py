"""A real `redis-server` (Debian's package) on a free loopback port, for tests and benchmarks.

Its data lives in `dir` with the append-only file on (`appendfsync always`: a write acknowledged
to the gateway is on disk before the reply, so a restart right after it keeps it). `restart()` stops
it (SIGTERM, as a service manager does) and starts it again on the same port and files.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from harness.procs import free_port, start, stop, wait_until


def _answers(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")


class RedisServer:
    def __init__(self, dir: Path, port: int | None = None) -> None:
        self.dir = Path(dir)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        program = shutil.which("redis-server")
        if program is None:
            raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [program, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no",
                "--logfile", str(self.dir / "redis.log")]
        self.proc = start(args, program=None)
        wait_until(lambda: self.proc.poll() is None and _answers(self.port), 10,
                   f"redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_redis(tmp_path: Path) -> RedisServer:
    """A started RedisServer with its files under `tmp_path/redis`; `.stop()` it when done."""
    return RedisServer(Path(tmp_path) / "redis").start()
