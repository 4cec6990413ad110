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
from ollabridge.node.credentials import Credentials, cloud_http, default_credentials, relay_url
from ollabridge.node.ollama import LocalOllama
from ollabridge.node.serving import Requests
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
        self._out: asyncio.Queue[str] = asyncio.Queue()
        self._models_sig: list[tuple[str, str]] = []
        self._goaway = False

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
                welcomed, code, reason = await self.session(cred)
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
                if self._goaway or code == p.CLOSE_RESTARTING:
                    attempt = 0  # a planned restart: come back soon (the new instance answers in seconds)
                self._goaway = False
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

    # -- one connection --------------------------------------------------------------------------
    async def session(self, cred: dict[str, Any]) -> tuple[bool, int | None, str]:
        """Connect, say hello, serve until the socket ends. Returns (welcomed, close code, reason)."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

        url = relay_url(self.cloud)
        welcomed = False
        requests: Requests | None = None
        try:
            async with connect(url, additional_headers={"Authorization": f"Bearer {cred['node_token']}"},
                               user_agent_header=AGENT, max_size=64 * 1024 * 1024, ping_interval=None,
                               open_timeout=15, close_timeout=2) as ws:
                models = await self.ollama.models()
                self._models_sig = _signature(models)
                await ws.send(p.encode({"type": "hello", "protocol": p.PROTOCOL, "name": self.name, "agent": AGENT,
                                       "models": models, "capabilities": self._capabilities()}))
                try:
                    raw = await asyncio.wait_for(ws.recv(), 20)
                except TimeoutError:
                    return False, None, "no welcome from the gateway"
                welcome = p.check_cloud_frame(p.parse(raw, 1 << 20, p.CLOUD_TYPES))
                if welcome["type"] != "welcome":
                    return False, None, f"expected welcome, got {welcome['type']}"
                welcomed = True
                beat = float(welcome.get("heartbeat_s") or 10)
                window = welcome.get("window")
                self._out = asyncio.Queue()
                requests = Requests(self.ollama, self.slots, self._out,
                                    window if isinstance(window, int) and window > 0 else None,
                                    int(welcome.get("max_frame") or p.DEFAULT_MAX_FRAME))
                say(f"Connected to {self.cloud} as {welcome.get('node_id')} ({self.name}): "
                    f"{self.slots} slots, models: {', '.join(m['name'] for m in models) or 'none yet'}")
                await self._serve(ws, beat, requests)
                await ws.close()
                return True, ws.close_code, ws.close_reason or ""
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            reason = exc.rcvd.reason if exc.rcvd else "connection lost"
            return welcomed, code, reason or p.CLOSE_REASONS.get(code or 0, "")
        except InvalidStatus as exc:
            return False, None, f"HTTP {exc.response.status_code} from {url}"
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            return False, None, f"{type(exc).__name__}: {exc}"
        except p.ProtocolError as exc:
            return welcomed, None, f"protocol error: {exc}"
        finally:
            if requests is not None:
                await requests.cancel_all()

    async def _serve(self, ws: Any, beat: float, requests: Requests) -> None:
        last_rx = [time.monotonic()]

        async def reader() -> None:
            async for raw in ws:
                last_rx[0] = time.monotonic()
                frame = p.check_cloud_frame(p.parse(raw, 64 * 1024 * 1024, p.CLOUD_TYPES))
                kind = frame["type"]
                if kind == "req":
                    requests.start(frame)
                elif kind == "cancel":
                    requests.cancel(frame["id"])
                elif kind == "credit":
                    requests.credit(frame["id"], frame["n"])
                elif kind == "ping":
                    self._send({"type": "pong", "t": frame.get("t")})
                elif kind == "goaway":
                    # The gateway is shutting down: it finishes what is in flight, then closes (1012).
                    self._goaway = True
                    say(f"{self.cloud} is shutting down; finishing {len(requests)} request(s), "
                        "then reconnecting")

        async def writer() -> None:
            while True:
                await ws.send(await self._out.get())

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(beat)
                if time.monotonic() - last_rx[0] > 3 * beat:
                    log.warning("the gateway was silent for 3 heartbeats; reconnecting")
                    return
                self._send({"type": "ping", "t": time.time()})

        async def watch_models() -> None:
            while True:
                await asyncio.sleep(self.models_interval)
                models = await self.ollama.models()
                signature = _signature(models)
                if signature != self._models_sig:
                    self._models_sig = signature
                    say(f"Models changed: {', '.join(m['name'] for m in models) or 'none'}")
                    self._send({"type": "models", "models": models})

        tasks = [asyncio.create_task(t()) for t in (reader, writer, heartbeat, watch_models)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _send(self, frame: dict[str, Any]) -> None:
        self._out.put_nowait(p.encode(frame))

    # -- the local machine -----------------------------------------------------------------------
    def _capabilities(self) -> dict[str, Any]:
        return {"gpu": self.gpu, "vram_mb": self.vram_mb, "slots": self.slots, "ops": list(p.OPS), "goaway": True}


def _signature(models: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((m.get("name") or m.get("model") or "", m.get("digest") or "") for m in models)


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
