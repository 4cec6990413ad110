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
import json
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
from ollabridge.backends import http1
from ollabridge.errors import ollama_error_message
from ollabridge.node import gpu
from ollabridge.node.banner import big, say
from ollabridge.node.credentials import Credentials, cloud_http, default_credentials, relay_url
from ollabridge.relay import protocol as p

log = logging.getLogger("ollabridge.node")

AGENT = f"ollabridge-node/{__version__}"
OLLAMA_PATHS = {"embed": "/api/embed", "embeddings": "/api/embeddings", "show": "/api/show"}
_FOREVER = 86400.0  # the local Ollama may think as long as it likes; the gateway has the timeouts
BACKOFF_MIN, BACKOFF_MAX = 1.0, 60.0

EXIT_REVOKED = 3
EXIT_DENIED = 4
EXIT_UNSUPPORTED = 5


# -- the agent -----------------------------------------------------------------------------------
class _Credit:
    """How many more `res` frames of one request the gateway will take (None: no limit)."""

    def __init__(self, n: int | None) -> None:
        self.n = n
        self.more = asyncio.Event()

    async def take(self) -> None:
        if self.n is None:
            return
        while self.n <= 0:
            self.more.clear()
            await self.more.wait()
        self.n -= 1

    def give(self, k: int) -> None:
        if self.n is not None:
            self.n += k
            self.more.set()


class Stop(Exception):
    """The agent must stop (revoked, denied, unsupported); `code` is the process exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class NodeAgent:
    def __init__(self, cloud: str, ollama: str, name: str, slots: int, credentials: Path,
                 models_interval: float = 10.0) -> None:
        self.cloud = cloud_http(cloud)
        self.ollama = ollama.rstrip("/")
        self.name = name
        self.slots = slots
        self.credentials = Credentials(credentials)
        self.models_interval = models_interval
        self.http = httpx.AsyncClient(base_url=self.ollama, timeout=httpx.Timeout(10.0, read=None),
                                      limits=httpx.Limits(max_connections=None))
        # Chat streams on the lean keep-alive pool when the local Ollama is plain http (the usual).
        self.pool = (http1.Http1Pool(self.ollama, connect_timeout=10.0, user_agent=AGENT)
                     if http1.direct_http(self.ollama) else None)
        self.gpu: str | None = None
        self.vram_mb: int | None = None
        self._active: dict[str, tuple[asyncio.Task, _Credit]] = {}
        self._out: asyncio.Queue[str] = asyncio.Queue()
        self._window: int | None = None
        self._max_frame = p.DEFAULT_MAX_FRAME
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
            if self.pool is not None:
                self.pool.close()
            await self.http.aclose()

    # -- pairing ---------------------------------------------------------------------------------
    async def pair(self) -> dict[str, Any]:
        """Run the device flow until the owner approves; returns the credential to save."""
        models = await self.local_models()
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
        try:
            async with connect(url, additional_headers={"Authorization": f"Bearer {cred['node_token']}"},
                               user_agent_header=AGENT, max_size=64 * 1024 * 1024, ping_interval=None,
                               open_timeout=15, close_timeout=2) as ws:
                models = await self.local_models()
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
                self._window = window if isinstance(window, int) and window > 0 else None
                self._max_frame = int(welcome.get("max_frame") or p.DEFAULT_MAX_FRAME)
                self._out = asyncio.Queue()
                say(f"Connected to {self.cloud} as {welcome.get('node_id')} ({self.name}): "
                    f"{self.slots} slots, models: {', '.join(m['name'] for m in models) or 'none yet'}")
                await self._serve(ws, beat)
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
            await self._cancel_all()

    async def _serve(self, ws: Any, beat: float) -> None:
        last_rx = [time.monotonic()]

        async def reader() -> None:
            async for raw in ws:
                last_rx[0] = time.monotonic()
                frame = p.check_cloud_frame(p.parse(raw, 64 * 1024 * 1024, p.CLOUD_TYPES))
                kind = frame["type"]
                if kind == "req":
                    self._start(frame)
                elif kind == "cancel":
                    active = self._active.get(frame["id"])
                    if active:
                        active[0].cancel()
                elif kind == "credit":
                    active = self._active.get(frame["id"])
                    if active:
                        active[1].give(frame["n"])
                elif kind == "ping":
                    self._send({"type": "pong", "t": frame.get("t")})
                elif kind == "goaway":
                    # The gateway is shutting down: it finishes what is in flight, then closes (1012).
                    self._goaway = True
                    say(f"{self.cloud} is shutting down; finishing {len(self._active)} request(s), "
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
                models = await self.local_models()
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

    # -- requests --------------------------------------------------------------------------------
    def _start(self, frame: dict[str, Any]) -> None:
        rid = frame["id"]
        if rid in self._active:
            return
        if len(self._active) >= self.slots:
            self._send({"type": "res", "id": rid, "done": True,
                        "error": {"status": 503, "message": f"node busy: all {self.slots} slots in use"}})
            return
        credit = _Credit(self._window)
        task = asyncio.create_task(self._serve_request(rid, frame["op"], frame["body"], credit))
        self._active[rid] = (task, credit)

    async def _serve_request(self, rid: str, op: str, body: dict[str, Any], credit: _Credit) -> None:
        try:
            if op == "chat":
                await self._chat(rid, body, credit)
            else:
                response = await self.http.post(OLLAMA_PATHS[op], json=body)
                if response.status_code >= 400:
                    self._error(rid, response.status_code, ollama_error_message(response.content, response.status_code))
                else:
                    await credit.take()
                    self._res(rid, response.json(), True)
        except asyncio.CancelledError:
            log.info("request %s cancelled by the gateway", rid)
        except http1.READ_ERRORS as exc:
            self._error(rid, 502, f"the node's Ollama at {self.ollama} failed: {exc!r}")
        except Exception as exc:  # noqa: BLE001 - one request never takes the agent down
            log.exception("request %s failed", rid)
            self._error(rid, 500, f"node error: {type(exc).__name__}: {exc}")
        finally:
            self._active.pop(rid, None)

    async def _chat(self, rid: str, body: dict[str, Any], credit: _Credit) -> None:
        reply = await http1.post_stream(self.pool, self.http, "/api/chat", json.dumps(body).encode(), _FOREVER)
        try:
            if reply.status >= 400:
                raw = await reply.read_all(30.0)
                self._error(rid, reply.status, ollama_error_message(raw, reply.status))
                return
            async for line in http1.Lines(reply, _FOREVER, _FOREVER):
                data = json.loads(line)
                done = bool(data.get("done")) or "error" in data
                await credit.take()
                self._res(rid, data, done)
                if done:
                    await http1.drain(reply)
                    return
        finally:
            await http1.close(reply)
        self._error(rid, 502, "the node's Ollama ended the stream before it was done")

    def _res(self, rid: str, data: dict[str, Any], done: bool) -> None:
        text = p.encode({"type": "res", "id": rid, "data": data, "done": done})
        if len(text.encode()) > self._max_frame:
            self._error(rid, 413, f"response larger than the relay's frame limit ({self._max_frame} bytes)")
        else:
            self._out.put_nowait(text)

    def _error(self, rid: str, status: int, message: str) -> None:
        self._send({"type": "res", "id": rid, "done": True, "error": {"status": status, "message": message}})

    async def _cancel_all(self) -> None:
        tasks = [task for task, _ in self._active.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._active.clear()

    # -- the local machine -----------------------------------------------------------------------
    async def local_models(self) -> list[dict[str, Any]]:
        try:
            response = await self.http.get("/api/tags", timeout=5.0)
            response.raise_for_status()
            return [m for m in response.json().get("models") or [] if m.get("name") or m.get("model")]
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("the local Ollama at %s does not answer (%s); offering no models for now", self.ollama, exc)
            return []

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
    say(f"OllaBridge node agent {__version__} on {platform.node()}: cloud {agent.cloud}, Ollama {agent.ollama}")
    try:
        return asyncio.run(agent.run())
    except KeyboardInterrupt:
        say("Stopped.")
        return 130
