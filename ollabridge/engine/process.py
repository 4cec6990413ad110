"""Run the in-box engine (`python -m ollabridge.engine`) as a child process of the gateway."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import sys
import time
from urllib.parse import urlsplit

import httpx

log = logging.getLogger("ollabridge.engine")


def engine_installed() -> bool:
    """The in-box engine needs llama-cpp-python (requirements-inbox.txt)."""
    return importlib.util.find_spec("llama_cpp") is not None


async def answers(base_url: str, timeout: float = 1.5) -> bool:
    """Whether an Ollama API answers at `base_url` now."""
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            return (await client.get(f"{base_url.rstrip('/')}/api/version")).status_code == 200
    except httpx.HTTPError:
        return False


class EngineProcess:
    """The engine's process: started on the host and port of OLLAMA_BASE_URL."""

    def __init__(self, base_url: str, model: str = "", start_timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.start_timeout = start_timeout
        self.proc: asyncio.subprocess.Process | None = None
        self.state = "stopped"  # stopped | starting | running | failed
        self.detail = ""

    async def start(self) -> bool:
        """Start the engine and wait until it answers; False (with `detail`) when it cannot."""
        if not engine_installed():
            self._fail("llama-cpp-python is not installed; run `pip install -r requirements-inbox.txt`"
                       " or point OLLAMA_BASE_URL at a running Ollama")
            return False
        parts = urlsplit(self.base_url)
        args = [sys.executable, "-m", "ollabridge.engine", "--host", parts.hostname or "127.0.0.1",
                "--port", str(parts.port or 11434)]
        if self.model:
            args += ["--model", self.model]
        self.state = "starting"
        log.info("starting the in-box engine at %s", self.base_url)
        self.proc = await asyncio.create_subprocess_exec(*args, env=os.environ.copy())
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                self._fail(f"the in-box engine exited with code {self.proc.returncode}; see the log above")
                return False
            if await answers(self.base_url, timeout=1.0):
                self.state, self.detail = "running", ""
                log.info("the in-box engine answers at %s", self.base_url)
                return True
            try:  # wake early when the process dies; otherwise poll again shortly
                await asyncio.wait_for(self.proc.wait(), 0.2)
            except TimeoutError:
                pass
        self._fail(f"the in-box engine did not answer within {self.start_timeout:g}s")
        await self.stop()
        return False

    def _fail(self, detail: str) -> None:
        self.state, self.detail = "failed", detail
        log.error("%s", detail)

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self.state == "running":
            self.state = "stopped"
