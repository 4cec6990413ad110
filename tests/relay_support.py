"""Helpers for the relay tests: a gateway, scripted Ollamas and node agents as real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx

from tests.procs import free_port, running, start, stop, wait_until

ADMIN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@contextmanager
def fake_ollama(log_dir: Path, models: str, *extra: str) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running(["-m", "tests.fake_ollama", "--port", str(port), "--models", models, *extra],
                 f"{url}/api/version", log=log_dir / f"fake-{port}.log", timeout=30):
        yield url


def control(url: str, **settings: Any) -> dict[str, Any]:
    return httpx.post(f"{url}/_control", json=settings).json()


def fake_stats(url: str) -> dict[str, int]:
    return httpx.get(f"{url}/_stats").json()


def gateway_env(data_dir: Path, port: int, ollama_url: str, **extra: str) -> dict[str, str]:
    return {"HOST": "127.0.0.1", "PORT": str(port), "OLLAMA_BASE_URL": ollama_url, "OLLABRIDGE_ENGINE": "ollama",
            "OLLABRIDGE_UI": "0", "OLLABRIDGE_DATA_DIR": str(data_dir), "OLLABRIDGE_ADMIN_TOKEN": ADMIN,
            "OLLABRIDGE_RELAY_HEARTBEAT": "1", "OLLABRIDGE_DEVICE_INTERVAL": "0.2",
            "OLLABRIDGE_DEVICE_RATE": "1000", "OLLABRIDGE_MODELS_TTL": "0.5", **extra}


@contextmanager
def gateway(log_dir: Path, data_dir: Path, ollama_url: str, port: int | None = None,
            **extra: str) -> Iterator[str]:
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    with running(["app.py"], f"{url}/health", env=gateway_env(data_dir, port, ollama_url, **extra),
                 log=log_dir / f"gateway-{port}.log", timeout=60):
        yield url


def pair(gw: str, name: str = "test-node") -> dict[str, Any]:
    """Pair a node over HTTP (start, approve, token) and return its credential."""
    flow = httpx.post(f"{gw}/device/start", json={"name": name}).json()
    httpx.post(f"{gw}/device/approve", json={"user_code": flow["user_code"]}, headers=AUTH).raise_for_status()
    answer = httpx.post(f"{gw}/device/token", json={"device_code": flow["device_code"]})
    answer.raise_for_status()
    return answer.json()


def save_credential(path: Path, gw: str, cred: dict[str, Any]) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    data[gw] = {**cred, "cloud": gw}
    path.write_text(json.dumps(data))
    os.chmod(path, 0o600)


def relay_nodes(gw: str) -> list[dict[str, Any]]:
    """The connected nodes, as the owner lists them (`/device/nodes` needs the admin token)."""
    return [n for n in httpx.get(f"{gw}/device/nodes", headers=AUTH, timeout=5).json()["nodes"] if n["connected"]]


def relay_stats(gw: str) -> dict[str, Any]:
    return httpx.get(f"{gw}/health", timeout=5).json()["relay"]


class Node:
    """A node agent process (`python -m ollabridge node`)."""

    def __init__(self, proc: subprocess.Popen, log: Path, name: str) -> None:
        self.proc = proc
        self.log = log
        self.name = name

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def code(self) -> str:
        """The pairing code it printed."""
        return wait_until(lambda: (re.search(r"Code: ([A-Z]{4}-[A-Z]{4})", self.text()) or [None, None])[1],
                          15, f"pairing code from {self.name}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        os.killpg(self.proc.pid, sig)


@contextmanager
def node(log_dir: Path, gw: str, ollama_url: str, credentials: Path, name: str, slots: int = 4,
         connected: bool = True, *extra: str) -> Iterator[Node]:
    log = log_dir / f"node-{name}-{time.monotonic_ns()}.log"
    proc = start(["-m", "ollabridge", "node", "--cloud", gw, "--ollama", ollama_url, "--name", name,
                  "--slots", str(slots), "--models-interval", "0.3", *extra], log,
                 {"OLLABRIDGE_NODE_CREDENTIALS": str(credentials)})
    agent = Node(proc, log, name)
    try:
        if connected:
            wait_connected(gw, name, agent)
        yield agent
    finally:
        stop(proc, timeout=5)


def wait_connected(gw: str, name: str, agent: Node | None = None, timeout: float = 15) -> dict[str, Any]:
    def check():
        if agent is not None and agent.proc.poll() is not None:
            raise RuntimeError(f"node agent exited with {agent.proc.returncode}:\n{agent.text()[-3000:]}")
        return next((n for n in relay_nodes(gw) if n["name"] == name), None)
    return wait_until(check, timeout, f"node {name} connected")


class RawNode:
    """A node that is only a WebSocket: the test writes every frame it sends (bad values, held slots).

    A thread sends a ping every half second, so the gateway never drops it for silence while the test
    waits; `recv` skips the gateway's pings and pongs."""

    def __init__(self, gw: str, token: str, name: str = "raw", models: tuple[str, ...] = ("raw:latest",),
                 slots: int = 1, ops: tuple[str, ...] = ("chat", "embed", "embeddings", "show")) -> None:
        import threading

        from websockets.sync.client import connect

        self.skipped: list[dict[str, Any]] = []
        self._connection = connect(gw.replace("http://", "ws://") + "/relay/connect", open_timeout=10,
                                   max_size=None, additional_headers={"Authorization": f"Bearer {token}"})
        self.ws = self._connection.__enter__()
        self.send({"type": "hello", "protocol": 1, "name": name, "agent": "raw-test/1",
                   "models": [{"name": m} for m in models], "capabilities": {"slots": slots, "ops": list(ops)}})
        self.welcome = self.recv("welcome", 5)
        self.closed = threading.Event()
        self.beat = threading.Thread(target=self._beat, daemon=True)
        self.beat.start()

    def _beat(self) -> None:
        while not self.closed.wait(0.5):
            try:
                self.send({"type": "ping", "t": time.time()})
            except Exception:  # noqa: BLE001 - the socket is closing
                return

    def send(self, frame: dict[str, Any] | str) -> None:
        self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    def recv(self, kind: str = "req", timeout: float = 10) -> dict[str, Any]:
        """The next frame of type `kind`; TimeoutError after `timeout`. Frames of other types on the way
        are kept in `skipped` (but for pings and pongs)."""
        deadline = time.monotonic() + timeout
        while True:
            frame = json.loads(self.ws.recv(max(0.0, deadline - time.monotonic())))
            if frame["type"] == kind:
                return frame
            if frame["type"] not in ("ping", "pong"):
                self.skipped.append(frame)

    def res(self, rid: str, data: dict[str, Any], done: bool = False) -> None:
        self.send({"type": "res", "id": rid, "data": data, "done": done})

    def close(self) -> None:
        self.closed.set()
        self._connection.__exit__(None, None, None)

    def __enter__(self) -> "RawNode":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def wait_model(gw: str, model: str, present: bool = True, timeout: float = 10) -> None:
    def listed() -> bool:
        names = {m["name"] for m in httpx.get(f"{gw}/ollama/api/tags", timeout=5).json()["models"]}
        return (model in names) == present
    wait_until(listed, timeout, f"{model} {'listed' if present else 'gone'}")
