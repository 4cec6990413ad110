"""Pull the default models (OLLABRIDGE_MODELS) into Ollama in the background, with progress.

The gateway serves at once; once it answers its own /health, `ModelPuller.run()` asks Ollama which models it already has and pulls the
missing ones one at a time through Ollama's own `POST /api/pull` (streamed progress). The progress of
each model is in `snapshot()`, which `/health` and `/ollama/status` (and so the UI) show, and in the log.
A failed pull is reported there and the gateway goes on serving whatever models are present.

These pulls go straight to Ollama's URL: the gateway's public API refuses `/api/pull` (403).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from ollabridge.errors import ollama_error_message

log = logging.getLogger("ollabridge.backends.pulls")


def full_name(model: str) -> str:
    """Ollama's spelling of a model with its tag: `phi3` -> `phi3:latest`."""
    model = model.strip()
    last = model.rsplit("/", 1)[-1]
    return model if ":" in last else f"{model}:latest"


class PullState:
    """One model's pull: queued | pulling | done | present | failed."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.state = "queued"
        self.status = ""  # Ollama's last status line, e.g. "pulling manifest"
        self.layers: dict[str, tuple[int, int]] = {}  # digest -> (completed, total)
        self.error = ""
        self.started: float | None = None
        self.finished: float | None = None

    @property
    def completed(self) -> int:
        return sum(done for done, _ in self.layers.values())

    @property
    def total(self) -> int:
        return sum(total for _, total in self.layers.values())

    @property
    def percent(self) -> float | None:
        if self.state in ("done", "present"):
            return 100.0
        return round(100.0 * self.completed / self.total, 1) if self.total else None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "state": self.state, "status": self.status,
                               "completed": self.completed, "total": self.total, "percent": self.percent}
        if self.error:
            out["error"] = self.error
        if self.started is not None:
            end = self.finished if self.finished is not None else time.time()
            out["elapsed_s"] = round(end - self.started, 1)
        return out


class ModelPuller:
    """Pulls `models` into the Ollama at `base_url`; `on_pulled` runs after each model that arrives."""

    def __init__(self, base_url: str, models: list[str], *,
                 on_pulled: Callable[[str], Awaitable[None]] | None = None,
                 after: Callable[[], Awaitable[object]] | None = None,
                 connect_timeout: float = 5.0, log_every_s: float = 5.0, wait_s: float = 120.0,
                 retry_delays: tuple[float, ...] = (5.0, 30.0),
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.pulls = [PullState(m) for m in dict.fromkeys(models)]
        self.on_pulled = on_pulled
        self.after = after  # awaited before the first pull (the gateway: until it serves requests)
        self.connect_timeout = connect_timeout
        self.log_every_s = log_every_s
        self.wait_s = wait_s  # how long to wait for Ollama to answer before the first pull
        self.retry_delays = retry_delays  # a failed pull is tried again after each (unless permanent)
        self.transport = transport  # tests only
        self.running = False
        self.skipped = ""  # why no pulls happen (e.g. the in-box engine is serving)

    def skip(self, reason: str) -> None:
        self.skipped = reason
        for pull in self.pulls:
            if pull.state == "queued":
                pull.state, pull.error = "skipped", reason
        log.info("model pulls skipped: %s", reason)

    def snapshot(self) -> dict[str, Any]:
        """What /health and /ollama/status show under `pulls`."""
        out: dict[str, Any] = {"running": self.running, "models": [p.describe() for p in self.pulls]}
        if self.skipped:
            out["skipped"] = self.skipped
        return out

    async def run(self) -> None:
        if not self.pulls:
            return
        self.running = True
        if self.after is not None:
            await self.after()
        timeout = httpx.Timeout(connect=self.connect_timeout, read=None, write=30.0, pool=None)
        try:
            async with httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=self.transport) as client:
                if not await self._wait_ollama(client):
                    detail = f"Ollama at {self.base_url} did not answer within {self.wait_s:g}s"
                    for pull in self.pulls:
                        pull.state, pull.error = "failed", detail
                    log.error("model pulls abandoned: %s", detail)
                    return
                present = await self._present(client)
                for pull in self.pulls:
                    if full_name(pull.model) in present:
                        pull.state, pull.status = "present", "already pulled"
                        log.info("model %s is already present", pull.model)
                        continue
                    await self._pull(client, pull)
        finally:
            self.running = False

    async def _wait_ollama(self, client: httpx.AsyncClient) -> bool:
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                if (await client.get("/api/version", timeout=2.0)).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.5)  # polling another process; nothing to await instead

    async def _present(self, client: httpx.AsyncClient) -> set[str]:
        try:
            response = await client.get("/api/tags", timeout=10.0)
            response.raise_for_status()
            return {full_name(m.get("name") or m.get("model") or "") for m in response.json().get("models") or []}
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("could not list Ollama's models before pulling (%s); pulling all", exc)
            return set()

    async def _pull(self, client: httpx.AsyncClient, pull: PullState) -> None:
        pull.state, pull.started = "pulling", time.time()
        log.info("pulling model %s from the Ollama library (in the background; the gateway serves meanwhile)",
                 pull.model)
        attempt = 0
        while True:
            try:
                await self._attempt(client, pull)
                break
            except (PullError, httpx.HTTPError) as exc:
                detail = str(exc) or type(exc).__name__
                if isinstance(exc, httpx.ConnectError):
                    detail = f"Ollama at {self.base_url} is unreachable: {detail}"
                if attempt < len(self.retry_delays) and not _permanent(detail):
                    delay = self.retry_delays[attempt]
                    attempt += 1
                    pull.status = f"retrying in {delay:g}s after: {detail}"
                    log.warning("pull %s failed (%s); retry %d of %d in %gs", pull.model, detail, attempt,
                                len(self.retry_delays), delay)
                    await asyncio.sleep(delay)
                    continue
                pull.state, pull.error, pull.finished = "failed", detail, time.time()
                log.error("pull %s failed: %s (the gateway goes on serving the models present)", pull.model,
                          detail)
                return
        pull.state, pull.finished = "done", time.time()
        log.info("pull %s done (%s in %.1fs)", pull.model, _mb(pull.total), pull.finished - pull.started)
        if self.on_pulled is not None:
            try:
                await self.on_pulled(pull.model)
            except Exception:  # noqa: BLE001 - a refresh hiccup must not stop the other pulls
                log.exception("after pulling %s", pull.model)

    async def _attempt(self, client: httpx.AsyncClient, pull: PullState) -> None:
        """One `POST /api/pull`, following its progress; raises PullError/httpx.HTTPError on failure."""
        last_log = 0.0
        async with client.stream("POST", "/api/pull",
                                 json={"model": pull.model, "name": pull.model, "stream": True}) as response:
            if response.status_code >= 400:
                raw = (await response.aread()).decode(errors="replace")
                raise PullError(ollama_error_message(raw, response.status_code))
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    raise PullError(f"Ollama sent a line that is not JSON: {line[:200]!r}") from None
                if event.get("error"):
                    raise PullError(str(event["error"]))
                pull.status = str(event.get("status") or pull.status)
                if event.get("digest") and event.get("total"):
                    pull.layers[event["digest"]] = (int(event.get("completed") or 0), int(event["total"]))
                now = time.monotonic()
                if now - last_log >= self.log_every_s:
                    last_log = now
                    pct = pull.percent
                    log.info("pull %s: %s%s", pull.model, pull.status,
                             f" {pct:.1f}% of {_mb(pull.total)}" if pct is not None else "")
                if pull.status == "success":
                    return
        raise PullError(f"the pull stream ended before success (last status: {pull.status or 'none'})")


def _permanent(detail: str) -> bool:
    """Errors a retry cannot fix: the model does not exist, or its name is wrong."""
    text = detail.lower()
    return any(s in text for s in ("file does not exist", "not found", "invalid model", "invalid name"))


class PullError(Exception):
    pass


async def wait_until_serving(host: str, port: int, timeout: float = 30.0) -> bool:
    """Wait (bounded) until this gateway answers its own /health, so pulls start once it serves."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    url = f"http://{'[' + host + ']' if ':' in host and not host.startswith('[') else host}:{port}/health"
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(url)).status_code < 500:
                    return True
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)  # uvicorn binds after the app's startup; nothing to await instead
    log.warning("the gateway did not answer %s within %gs; pulling anyway", url, timeout)
    return False


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n else "? MB"
