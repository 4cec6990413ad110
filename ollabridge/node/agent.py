"""The node agent: pairs a GPU machine with a gateway by code, then serves it over the relay.

    python -m ollabridge node --cloud https://<space>.hf.space [--ollama URL] [--name N] [--slots K]

With no saved credential for that cloud it runs the device flow (prints the code, large, and
the URL where the owner approves it), saves the credential (mode 0600), and connects. It
reconnects with exponential backoff and jitter (1 s to 60 s), serves `req` frames from its
local Ollama (streaming, honouring `cancel`, its slot count and the gateway's flow-control
credit), reports model list changes, and stops with a plain message when revoked.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import socket
import sys
from pathlib import Path
from typing import Any

from ollabridge import __version__
from ollabridge.node import AGENT, backoff, gpu, pairing
from ollabridge.node.banner import say
from ollabridge.node.credentials import Credentials, cloud_http, default_credentials
from ollabridge.node.ollama import LocalOllama
from ollabridge.node.session import Session
from ollabridge.relay import protocol as p

EXIT_REVOKED = 3
EXIT_DENIED = 4
EXIT_UNSUPPORTED = 5


# -- the agent -----------------------------------------------------------------------------------
class Stop(Exception):
    """The agent must stop (revoked, denied, unsupported); `code` is the process exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class NodeAgent:
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

    # -- life ------------------------------------------------------------------------------------
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
                session = Session(self.cloud, self.name, self.slots, self.ollama, self._capabilities(),
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

    # -- the local machine -----------------------------------------------------------------------
    def _capabilities(self) -> dict[str, Any]:
        return {"gpu": self.gpu, "vram_mb": self.vram_mb, "slots": self.slots, "ops": list(p.OPS), "goaway": True}


# -- command line --------------------------------------------------------------------------------
def add_arguments(parser: Any) -> None:
    parser.add_argument("--cloud", required=True, help="the gateway, e.g. https://<space>.hf.space")
    parser.add_argument("--ollama", default=os.environ.get("OLLAMA_BASE_URL", "http://127.0.0.1:11434"),
                        help="this machine's Ollama (default: $OLLAMA_BASE_URL or http://127.0.0.1:11434)")
    parser.add_argument("--name", default=os.environ.get("OLLABRIDGE_NODE_NAME") or socket.gethostname()[:64],
                        help="the name the owner sees (default: the host name)")
    parser.add_argument("--slots", type=int, default=int(os.environ.get("OLLABRIDGE_NODE_SLOTS", "4")),
                        help="requests served at once (default 4)")
    parser.add_argument("--credentials", type=Path, default=None,
                        help="where credentials are saved (default: $OLLABRIDGE_NODE_CREDENTIALS or "
                             "~/.config/ollabridge/node-credentials.json)")
    parser.add_argument("--models-interval", type=float,
                        default=float(os.environ.get("OLLABRIDGE_NODE_MODELS_INTERVAL", "10")),
                        help="seconds between checks of the local model list (default 10)")


def main(args: Any) -> int:
    logging.basicConfig(level=os.environ.get("OLLABRIDGE_LOG_LEVEL", "info").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not 1 <= args.slots <= p.MAX_SLOTS:
        say(f"--slots must be between 1 and {p.MAX_SLOTS}")
        return 2
    agent = NodeAgent(args.cloud, args.ollama, args.name, args.slots, args.credentials or default_credentials(),
                      models_interval=args.models_interval)
    say(f"OllaBridge node agent {__version__} on {platform.node()}: cloud {agent.cloud}, Ollama {agent.ollama.url}")
    try:
        return asyncio.run(agent.run())
    except KeyboardInterrupt:
        say("Stopped.")
        return 130
