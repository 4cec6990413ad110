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
import random
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from ollabridge import __version__
from ollabridge.node import AGENT, gpu
from ollabridge.node.banner import big, say
from ollabridge.node.credentials import Credentials, cloud_http, default_credentials
from ollabridge.node.ollama import LocalOllama
from ollabridge.node.session import Session
from ollabridge.relay import protocol as p

log = logging.getLogger("ollabridge.node")

BACKOFF_MIN, BACKOFF_MAX = 1.0, 60.0

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
                delay = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** attempt)
                delay = random.uniform(delay / 2, delay)
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

    # -- pairing ---------------------------------------------------------------------------------
    async def pair(self) -> dict[str, Any]:
        """Run the device flow until the owner approves; returns the credential to save."""
        models = await self.ollama.models()
        offer = {"name": self.name, "agent": AGENT, "models": [m["name"] for m in models],
                 "capabilities": self._capabilities()}
        failures = 0
        async with httpx.AsyncClient(base_url=self.cloud, timeout=15.0) as client:
            while True:
                try:
                    started = await client.post("/device/start", json=offer)
                    if started.status_code == 429:
                        wait = float(started.headers.get("Retry-After") or 30)
                        say(f"{self.cloud} asks to wait {wait:g}s before pairing again.")
                        await asyncio.sleep(wait)
                        continue
                    started.raise_for_status()
                    flow = started.json()
                except (httpx.HTTPError, ValueError) as exc:
                    failures += 1
                    delay = random.uniform(0.5, 1) * min(BACKOFF_MAX, BACKOFF_MIN * 2 ** failures)
                    say(f"Could not reach {self.cloud} to pair ({exc}); retrying in {delay:.1f}s")
                    await asyncio.sleep(delay)
                    continue
                self._show_code(flow)
                cred = await self._wait_approval(client, flow)
                if cred is not None:
                    return {**cred, "name": self.name, "cloud": self.cloud, "saved_at": time.time()}
                say("The code expired before it was approved; here is a new one.")

    def _show_code(self, flow: dict[str, Any]) -> None:
        code = flow["user_code"]
        bar = "=" * 64
        say(f"\n{bar}\n  Pair this machine ({self.name}) with {self.cloud}\n\n{big(code)}\n\n"
            f"  Code: {code}\n  Approve it at:  {flow.get('verification_uri_complete') or flow['verification_uri']}\n"
            f"  (Pair tab, signed in with the admin token), or with:\n"
            f"    curl -X POST {self.cloud}/device/approve -H 'Authorization: Bearer <admin token>' \\\n"
            f"         -H 'Content-Type: application/json' -d '{{\"user_code\": \"{code}\"}}'\n"
            f"  The code expires in {int(flow.get('expires_in', 600)) // 60} minutes.\n{bar}\n")

    async def _wait_approval(self, client: httpx.AsyncClient, flow: dict[str, Any]) -> dict[str, Any] | None:
        interval = float(flow.get("interval") or 5)
        deadline = time.monotonic() + float(flow.get("expires_in") or 600) + 5
        while time.monotonic() < deadline:
            await asyncio.sleep(interval)
            try:
                answer = await client.post("/device/token", json={"device_code": flow["device_code"]})
                data = answer.json()
            except (httpx.HTTPError, ValueError) as exc:
                log.info("polling for approval failed (%s); trying again", exc)
                continue
            if answer.status_code == 200 and data.get("node_token"):
                return data
            error = data.get("error")
            if error == "authorization_pending":
                continue
            if error == "slow_down":
                interval += 5
                continue
            if error == "access_denied":
                raise Stop(f"The owner of {self.cloud} denied this pairing request.", EXIT_DENIED)
            return None  # expired_token, invalid_grant: start over with a new code
        return None

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
