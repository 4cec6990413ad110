"""OLLABRIDGE_ENGINE: the in-box engine starts only where no Ollama answers, and stops with the gateway."""

from __future__ import annotations

import httpx

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
