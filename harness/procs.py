"""Run the project's servers as real processes on loopback, wait for them, stop them.

One copy for tests/ and bench/: a free port, a wait for an HTTP answer or any other condition of
another process, a process in its own session (so its children stop with it), and its stop.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
# Errors a check of another process's state may raise while that process is not there yet.
NOT_YET = (httpx.HTTPError, OSError, ValueError, KeyError)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(log: Path | None) -> str:
    return log.read_text(errors="replace")[-4000:] if log and log.exists() else ""


def wait_until(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
               interval: float = 0.05) -> Any:
    """Poll another process's state until `check()` is truthy and return it (there is no event to
    await across processes); NOT_YET errors count as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except NOT_YET:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        time.sleep(interval)


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 60.0,
              log: Path | None = None) -> None:
    """Poll `url` until it answers 2xx, `proc` dies, or `timeout` passes (errors carry the log's tail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode} before {url} answered\n{_tail(log)}")
        try:
            if httpx.get(url, timeout=2.0).status_code < 300:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s\n{_tail(log)}")


def start(args: list[str], log: Path | None = None, env: dict[str, str] | None = None,
          program: str | None = PY) -> subprocess.Popen:
    """`program *args` (this Python by default; None: args[0] is the program) from the repo root, in a
    session of its own, output appended to `log`."""
    full_env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", **(env or {})}
    argv = [program, *args] if program else list(args)
    out = open(log, "ab") if log else subprocess.DEVNULL
    try:
        return subprocess.Popen(argv, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        if log:
            out.close()  # the child has its own copy


def stop(proc: subprocess.Popen, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Signal the process's session, wait up to `timeout`, then SIGKILL it."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@contextmanager
def running(args: list[str], ready_url: str, env: dict[str, str] | None = None, log: Path | None = None,
            timeout: float = 120.0, program: str | None = PY) -> Iterator[subprocess.Popen]:
    """`start` it, wait until `ready_url` answers, yield the process, stop it when the block ends."""
    proc = start(args, log, env, program)
    try:
        wait_http(ready_url, proc, timeout, log)
        yield proc
    finally:
        stop(proc)
