"""The node agent's life: pair once, then connect, serve, and reconnect until told to stop.

`NodeAgent.run` probes the GPU, pairs by code when there is no saved credential for that cloud
(saving it, mode 0600), and runs one `Session` after another, waiting between them with
exponential backoff and jitter (1 s to 60 s; at once again after a `welcome` or a planned
restart). It stops with a plain message and an exit status (`Stop`) when the node is revoked
(EXIT_REVOKED, the credential deleted), pairing is denied (EXIT_DENIED) or the gateway speaks
another protocol version (EXIT_UNSUPPORTED); a credential the gateway no longer knows means
pairing again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ollabridge.node import AGENT, backoff, gpu, pairing
from ollabridge.node.banner import say
from ollabridge.node.credentials import Credentials, cloud_http
from ollabridge.node.ollama import LocalOllama
from ollabridge.node.session import Session
from ollabridge.relay import protocol as p

EXIT_REVOKED = 3
EXIT_DENIED = 4
EXIT_UNSUPPORTED = 5


class Stop(Exception):
    """The agent must stop (revoked, denied, unsupported); `code` is the process exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class NodeAgent:
    """One machine's node: its gateway (`cloud`), its Ollama, its name and slot count, its credentials."""

    def __init__(self, cloud: str, ollama: str, name: str, slots: int, credentials: Path,
                 models_interval: float = 10.0) -> None:
        self.cloud = cloud_http(cloud)
        self.ollama = LocalOllama(ollama)
        self.name = name
        self.slots = slots
        self.credentials = Credentials(credentials)
        self.models_interval = models_interval
        self.gpu: str | None = None
        self.vram_mb: int | None = None

    async def run(self) -> int:
        self.gpu, self.vram_mb = await gpu.detect()
        try:
            attempt = 0
            while True:
                cred = self.credentials.get(self.cloud)
                if cred is None:
                    cred = await self.pair()
                    self.credentials.put(self.cloud, cred)
                    say(f"Paired as node {cred['node_id']}; credential saved in {self.credentials.path}")
                    attempt = 0
                session = Session(self.cloud, self.name, self.slots, self.ollama,
                                  {**self._capabilities(), "ollama_version": await self.ollama.version()},
                                  self.models_interval)
                welcomed, code, reason = await session.run(cred["node_token"])
                if code == p.CLOSE_REVOKED:
                    self.credentials.put(self.cloud, None)
                    raise Stop(f"This node was revoked by the owner of {self.cloud}. Its credential "
                               "is deleted; run the agent again to pair anew.", EXIT_REVOKED)
                if code == p.CLOSE_BAD_TOKEN:
                    say(f"{self.cloud} does not know this node's credential any more; pairing again.")
                    self.credentials.put(self.cloud, None)
                    continue
                if code == p.CLOSE_UNSUPPORTED:
                    raise Stop(f"{self.cloud} speaks another relay protocol version ({reason}); "
                               "update ollabridge on this machine.", EXIT_UNSUPPORTED)
                if welcomed:
                    attempt = 0
                if session.goaway or code == p.CLOSE_RESTARTING:
                    attempt = 0  # a planned restart: come back soon (the new instance answers in seconds)
                delay = backoff.delay(attempt)
                attempt += 1
                why = reason or p.CLOSE_REASONS.get(code or 0) or (f"close code {code}" if code else "unreachable")
                say(f"Disconnected from {self.cloud} ({why}); "
                    f"reconnecting in {delay:.1f}s")
                await asyncio.sleep(delay)
        except Stop as stop:
            say(str(stop))
            return stop.code
        finally:
            await self.ollama.close()

    async def pair(self) -> dict[str, Any]:
        """Pair by code (the device flow) until the owner approves; returns the credential to save."""
        models = await self.ollama.models()
        offer = {"name": self.name, "agent": AGENT, "models": [m["name"] for m in models],
                 "capabilities": self._capabilities()}
        try:
            return await pairing.pair(self.cloud, self.name, offer)
        except pairing.Denied as denied:
            raise Stop(str(denied), EXIT_DENIED) from None

    def _capabilities(self) -> dict[str, Any]:
        return {"gpu": self.gpu, "vram_mb": self.vram_mb, "slots": self.slots, "ops": list(p.OPS), "goaway": True}
