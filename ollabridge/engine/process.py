"""Run the in-box engine (`python -m ollabridge.engine`) as a child process of the gateway, restarted
with a bounded backoff whenever it dies."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import sys
import time
from typing import Awaitable, Callable
from urllib.parse import urlsplit

import httpx

log = logging.getLogger("ollabridge.engine")

# Restarts after the engine died: the first after RESTART_DELAY seconds, each next one after twice
# the last, at most RESTART_DELAY_MAX; a run of STABLE_AFTER seconds starts the doubling afresh.
RESTART_DELAY = 1.0
RESTART_DELAY_MAX = 30.0
STABLE_AFTER = 60.0


def engine_installed() -> bool:
    """The in-box engine needs llama-cpp-python (the `inbox` extra)."""
    return importlib.util.find_spec("llama_cpp") is not None


async def answers(base_url: str, timeout: float = 1.5) -> bool:
    """Whether an Ollama API answers at `base_url` now."""
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            return (await client.get(f"{base_url.rstrip('/')}/api/version")).status_code == 200
    except httpx.HTTPError:
        return False


class EngineProcess:
    """The engine's process: started on the host and port of OLLAMA_BASE_URL, and supervised.

    States: stopped, starting (spawned, not answering yet), running, restarting (it died; the next
    start is due after the backoff) and failed (the first start failed: nothing a restart fixes)."""

    def __init__(self, base_url: str, model: str = "", start_timeout: float = 120.0, *,
                 restart_delay: float = RESTART_DELAY, restart_delay_max: float = RESTART_DELAY_MAX) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.start_timeout = start_timeout
        self.restart_delay = restart_delay
        self.restart_delay_max = restart_delay_max
        self.proc: asyncio.subprocess.Process | None = None
        self.state = "stopped"  # stopped | starting | running | restarting | failed
        self.detail = ""
        self.restarts = 0  # restarts tried since the gateway started
        self._stopping = False

    @property
    def pid(self) -> int | None:
        """The engine process's id while it runs."""
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    def command(self) -> list[str]:
        parts = urlsplit(self.base_url)
        args = [sys.executable, "-m", "ollabridge.engine", "--host", parts.hostname or "127.0.0.1",
                "--port", str(parts.port or 11434)]
        if self.model:
            args += ["--model", self.model]
        return args

    async def start(self) -> bool:
        """Start the engine and wait until it answers; False (with `detail`) when it cannot."""
        if not engine_installed():
            self._fail("llama-cpp-python is not installed; install the inbox extra (`uv pip install -r "
                       "requirements-inbox.lock`, or `pip install \".[inbox]\"`) or point OLLAMA_BASE_URL at a "
                       "running Ollama")
            return False
        why = await self._launch()
        if why is not None:
            self._fail(why)
        return why is None

    async def supervise(self, up: Callable[[], Awaitable[None]], down: Callable[[], None]) -> None:
        """Run the engine for as long as the gateway runs: start it, and each time it dies start it
        again, after a delay that doubles from `restart_delay` up to `restart_delay_max` while the
        runs stay short (a run of STABLE_AFTER seconds resets it). `up()` is awaited each time the
        engine answers, `down()` called each time it dies. A first start that fails is not retried
        (state "failed"): a missing model file or llama-cpp-python is nothing a restart fixes."""
        if not await self.start():
            return
        delay = self.restart_delay
        while True:
            began = time.monotonic()
            await up()
            assert self.proc is not None
            code = await self.proc.wait()
            if self._stopping:
                return
            if time.monotonic() - began >= STABLE_AFTER:
                delay = self.restart_delay
            down()
            died = f"the in-box engine exited with code {code}"
            why: str | None = died
            while why is not None:
                self.restarts += 1
                self.state, self.detail = "restarting", f"{why}; restart {self.restarts} in {delay:g}s"
                log.error("%s", self.detail)
                await asyncio.sleep(delay)
                if self._stopping:
                    return
                delay = min(delay * 2, self.restart_delay_max)
                why = await self._launch()
            self.detail = f"restarted after {died.removeprefix('the in-box engine ')}"

    async def _launch(self) -> str | None:
        """Spawn the engine and wait until it answers: None once it does, else why not (and it is gone)."""
        self.state = "starting"
        log.info("starting the in-box engine at %s", self.base_url)
        try:
            self.proc = proc = await asyncio.create_subprocess_exec(*self.command(), env=os.environ.copy())
        except OSError as exc:
            return f"the in-box engine could not be started: {exc}"
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                return f"the in-box engine exited with code {proc.returncode}; see the log above"
            if await answers(self.base_url, timeout=1.0):
                self.state, self.detail = "running", ""
                log.info("the in-box engine answers at %s (pid %d)", self.base_url, proc.pid)
                return None
            try:  # wake early when the process dies; otherwise poll again shortly
                await asyncio.wait_for(proc.wait(), 0.2)
            except TimeoutError:
                pass
        await _end(proc)
        return f"the in-box engine did not answer within {self.start_timeout:g}s"

    def _fail(self, detail: str) -> None:
        self.state, self.detail = "failed", detail
        log.error("%s", detail)

    async def stop(self) -> None:
        self._stopping = True
        proc, self.proc = self.proc, None
        if self.state != "failed":
            self.state = "stopped"
        if proc is not None:
            await _end(proc)


async def _end(proc: asyncio.subprocess.Process) -> None:
    """Terminate the process (kill it after 10 s) and reap it."""
    if proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        proc.kill()
        await proc.wait()
