"""Start the project's servers as real processes on loopback for tests, and stop them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen | None, timeout: float, log: Path | None = None) -> None:
    """Poll `url` until it answers 2xx, the process dies, or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            detail = log.read_text()[-4000:] if log and log.exists() else ""
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered\n{detail}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 300:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)  # polling a process we do not control; no event to await
    detail = log.read_text()[-4000:] if log and log.exists() else ""
    raise TimeoutError(f"{url} did not answer within {timeout}s\n{detail}")


@contextmanager
def running(args: list[str], ready_url: str, env: dict[str, str] | None = None,
            log: Path | None = None, timeout: float = 120.0) -> Iterator[subprocess.Popen]:
    """Run `python <args>` from the repo root until the block ends; yields the process."""
    full_env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", **(env or {})}
    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=full_env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(ready_url, proc, timeout, log)
        yield proc
    finally:
        stop(proc)
        if log:
            out.close()


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
