"""OLLABRIDGE_ENGINE: the in-box engine starts only where no Ollama answers, and stops with the gateway."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai

from ollabridge.engine import process

from tests.conftest import gateway_env
from tests.procs import free_port, running
from tests.relay_support import fake_ollama, wait_until


def test_auto_starts_the_inbox_engine_when_no_ollama_answers(out_dir, tmp_path):
    port, engine_port = free_port(), free_port()
    engine = f"http://127.0.0.1:{engine_port}"
    env = gateway_env(tmp_path, port, OLLAMA_BASE_URL=engine, OLLABRIDGE_ENGINE="auto")
    gw = f"http://127.0.0.1:{port}"
    with running(["app.py"], f"{gw}/health", env=env, log=out_dir / "gw-auto.log"):
        health = wait_until(lambda: (h := httpx.get(f"{gw}/health").json())["engine"]["state"] == "running"
                            and h, timeout=120, what="in-box engine up")
        assert health["status"] == "ok" and health["engine"]["active"] == "inbox"
        assert "gemma3:270m" in health["backends"][0]["models"]
        reply = httpx.post(f"{gw}/ollama/v1/chat/completions", timeout=60,
                           json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
        assert reply.status_code == 200 and reply.json()["model"] == "gemma3:270m"  # default falls back
        assert httpx.get(f"{gw}/ollama/status").json()["engine"]["active"] == "inbox"
    try:
        httpx.get(f"{engine}/api/version", timeout=2)
        raise AssertionError("the in-box engine outlived the gateway")
    except httpx.HTTPError:
        pass


def test_auto_leaves_the_engine_off_where_ollama_runs(out_dir, tmp_path):
    with fake_ollama(out_dir, "qwen2.5:1.5b") as ollama:
        port = free_port()
        env = gateway_env(tmp_path, port, OLLAMA_BASE_URL=ollama, OLLABRIDGE_ENGINE="auto")
        gw = f"http://127.0.0.1:{port}"
        with running(["app.py"], f"{gw}/health", env=env, log=out_dir / "gw-auto-ollama.log"):
            health = httpx.get(f"{gw}/health").json()
            assert health["engine"]["active"] == "ollama" and "state" not in health["engine"]
            assert [m["id"] for m in httpx.get(f"{gw}/ollama/v1/models").json()["data"]] == ["qwen2.5:1.5b"]


class _Records(logging.Handler):
    """The engine's log records, as a queue a test awaits (they are written on the event loop)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.queue: asyncio.Queue[str] = asyncio.Queue()

    def emit(self, record: logging.LogRecord) -> None:
        self.queue.put_nowait(record.getMessage())

    async def next(self, containing: str) -> str:
        while containing not in (message := await asyncio.wait_for(self.queue.get(), 30)):
            pass
        return message


async def test_a_dead_engine_is_restarted_with_a_bounded_backoff(monkeypatch):
    """The supervisor on a stand-in engine (the scripted Ollama): killed, it comes back; while its
    restarts fail they are tried again, each delay twice the last up to the cap; a first start that
    fails is not retried."""
    monkeypatch.setattr(process, "engine_installed", lambda: True)
    port = free_port()

    class StandIn(process.EngineProcess):
        broken = False

        def command(self):
            if self.broken:
                return [sys.executable, "-c", "raise SystemExit(3)"]
            return [sys.executable, "-m", "tests.fake_ollama", "--port", str(port), "--models", "a:latest"]

    records = _Records()
    logging.getLogger("ollabridge.engine").addHandler(records)
    engine = StandIn(f"http://127.0.0.1:{port}", start_timeout=30, restart_delay=0.05, restart_delay_max=0.2)
    ups: asyncio.Queue[int | None] = asyncio.Queue()
    downs: list[str] = []

    async def up():
        ups.put_nowait(engine.pid)

    supervisor = asyncio.create_task(engine.supervise(up, lambda: downs.append(engine.state)))
    try:
        first = await asyncio.wait_for(ups.get(), 30)
        assert engine.state == "running" and first and engine.restarts == 0
        engine.broken = True
        os.kill(first, signal.SIGKILL)
        delays = [await records.next(f"restart {n} in") for n in range(1, 6)]
        assert [d.rsplit(" in ", 1)[1] for d in delays] == ["0.05s", "0.1s", "0.2s", "0.2s", "0.2s"]
        assert "exited with code -9" in delays[0] and "exited with code 3" in delays[1]
        assert downs == ["running"]  # told once, when it died; the router waits for it meanwhile
        engine.broken = False
        second = await asyncio.wait_for(ups.get(), 30)
        assert second not in (None, first) and engine.state == "running"
        assert engine.restarts >= 5 and engine.detail == "restarted after exited with code -9"
        assert (await process.answers(engine.base_url))
    finally:
        await engine.stop()
        logging.getLogger("ollabridge.engine").removeHandler(records)
    await asyncio.wait_for(supervisor, 30)  # a stopped engine is not restarted
    assert engine.state == "stopped" and engine.pid is None and not await process.answers(engine.base_url)

    broken = StandIn(f"http://127.0.0.1:{port}", start_timeout=30)
    broken.broken = True
    await asyncio.wait_for(broken.supervise(up, lambda: downs.append("again")), 30)
    assert broken.state == "failed" and "exited with code 3" in broken.detail and broken.restarts == 0
    assert ups.empty() and downs == ["running"]


def test_chats_at_boot_and_after_the_engine_died_wait_for_it(out_dir, tmp_path):
    """As a script that runs `python app.py &` and chats at once: the first chats arrive while the
    in-box engine still loads, and get answers, not 503. Then the engine is killed mid-run: /health
    shows it restarting, a chat meanwhile waits for it, and it is back with a new process."""
    port, engine_port = free_port(), free_port()
    gw = f"http://127.0.0.1:{port}"
    env = gateway_env(tmp_path, port, OLLAMA_BASE_URL=f"http://127.0.0.1:{engine_port}", OLLABRIDGE_ENGINE="inbox")
    hi = [{"role": "user", "content": "Hi"}]
    sdk = openai.OpenAI(base_url=f"{gw}/ollama/v1", api_key="x", max_retries=0, timeout=120)
    with running(["app.py"], f"{gw}/openapi.json", env=env, log=out_dir / "gw-engine-supervised.log"):
        assert httpx.get(f"{gw}/health", timeout=10).json()["engine"]["state"] == "starting"  # the premise
        with ThreadPoolExecutor(2) as chats:
            named = chats.submit(sdk.chat.completions.create, model="gemma3:270m", messages=hi, max_tokens=3)
            unnamed = chats.submit(httpx.post, f"{gw}/ollama/v1/chat/completions", timeout=120,
                                   json={"messages": hi, "max_tokens": 3})
            assert named.result().choices[0].finish_reason in ("length", "stop")
            assert unnamed.result().status_code == 200 and unnamed.result().json()["model"] == "gemma3:270m"
        engine = httpx.get(f"{gw}/health", timeout=10).json()["engine"]
        assert (engine["state"], engine["restarts"]) == ("running", 0) and engine["pid"]

        os.kill(engine["pid"], signal.SIGKILL)
        down = wait_until(lambda: (e := httpx.get(f"{gw}/health", timeout=10).json()["engine"])["state"]
                          != "running" and e, timeout=30, what="the engine's death seen")
        assert down["state"] in ("restarting", "starting") and down["restarts"] == 1
        assert "exited with code -9" in down["detail"] or down["state"] == "starting"
        reply = sdk.chat.completions.create(model="gemma3:270m", messages=hi, max_tokens=3)
        assert reply.choices[0].finish_reason in ("length", "stop")
        back = httpx.get(f"{gw}/health", timeout=10).json()["engine"]
        assert (back["state"], back["restarts"]) == ("running", 1) and back["pid"] not in (None, engine["pid"])
        assert back["detail"] == "restarted after exited with code -9"
