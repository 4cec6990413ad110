"""Routing and failure paths, with scripted Ollama servers where determinism matters."""

from __future__ import annotations

import json
import socket
import time
from contextlib import contextmanager

import httpx
import openai
import pytest

from tests.conftest import gateway_env
from tests.procs import free_port, running
from tests.relay_support import control, fake_ollama, fake_stats, gateway, wait_until
from tests.relay_support import gateway_env as relay_gateway_env

HELLO = [{"role": "user", "content": "Hello!"}]


@pytest.fixture(scope="module")
def two_upstreams(out_dir, tmp_path_factory):
    """The gateway's Ollama serves model `a`; an extra upstream serves model `b`."""
    with fake_ollama(out_dir, "a:latest") as first, fake_ollama(out_dir, "b:latest") as second:
        with gateway(out_dir, tmp_path_factory.mktemp("gw"), first, OLLABRIDGE_UPSTREAMS=second) as gw:
            yield gw, first, second


def _sse(gw: str, body: dict) -> list[str]:
    with httpx.stream("POST", f"{gw}/ollama/v1/chat/completions", json={**body, "stream": True}, timeout=30) as r:
        assert r.status_code == 200
        return [line[6:] for line in r.iter_lines() if line.startswith("data: ")]


def test_models_are_the_union_and_each_model_goes_where_it_lives(two_upstreams):
    gw, first, second = two_upstreams
    sdk = openai.OpenAI(base_url=f"{gw}/ollama/v1", api_key="x")
    assert {"a:latest", "b:latest"} <= {m.id for m in sdk.models.list()}
    assert {"a:latest", "b:latest"} <= {m["name"] for m in httpx.get(f"{gw}/ollama/api/tags").json()["models"]}
    before_a, before_b = fake_stats(first)["chats"], fake_stats(second)["chats"]
    assert sdk.chat.completions.create(model="b", messages=HELLO).choices[0].message.content.startswith("tok0")
    sdk.chat.completions.create(model="a:latest", messages=HELLO)
    assert (fake_stats(first)["chats"] - before_a, fake_stats(second)["chats"] - before_b) == (1, 1)


def test_native_chat_streams_ndjson_as_the_backend_wrote_it(two_upstreams):
    gw, _, _ = two_upstreams
    with httpx.stream("POST", f"{gw}/ollama/api/chat", json={"model": "a", "messages": HELLO}) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert [line["message"]["content"] for line in lines[:-1]] == [f"tok{i} " for i in range(5)]
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 5
    single = httpx.post(f"{gw}/ollama/api/chat", json={"model": "a", "messages": HELLO, "stream": False}).json()
    assert single["done"] is True and single["message"]["content"]


def test_backend_dying_mid_stream_ends_with_an_error_event(out_dir, tmp_path):
    with fake_ollama(out_dir, "a:latest", "--chunks", "50", "--die-after", "3") as up, \
            gateway(out_dir, tmp_path, up) as gw:
        events = _sse(gw, {"model": "a", "messages": HELLO})
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["message"] and error["type"]
        assert [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:3]] == ["tok0 ", "tok1 ", "tok2 "]


def test_backend_dying_mid_ndjson_ends_with_an_error_line(out_dir, tmp_path):
    with fake_ollama(out_dir, "a:latest", "--chunks", "50", "--die-after", "3") as up, \
            gateway(out_dir, tmp_path, up) as gw:
        with httpx.stream("POST", f"{gw}/ollama/api/chat", json={"model": "a", "messages": HELLO}) as r:
            lines = [json.loads(line) for line in r.iter_lines() if line]
        assert "error" in lines[-1] and len(lines) == 4


def test_hanging_backend_gets_a_clear_timeout_not_a_hang(out_dir, tmp_path):
    with fake_ollama(out_dir, "a:latest", "--hang") as up, \
            gateway(out_dir, tmp_path, up, OLLABRIDGE_FIRST_TOKEN_TIMEOUT="1") as gw:
        sdk = openai.OpenAI(base_url=f"{gw}/ollama/v1", api_key="x", max_retries=0, timeout=30)
        with pytest.raises(openai.APIStatusError) as err:
            sdk.chat.completions.create(model="a", messages=HELLO)
        assert err.value.status_code == 504 and "1s" in err.value.message


def test_client_disconnect_cancels_the_upstream_request(out_dir, tmp_path):
    with fake_ollama(out_dir, "a:latest", "--chunks", "1000", "--delay", "0.02") as up, \
            gateway(out_dir, tmp_path, up) as gw:
        with httpx.stream("POST", f"{gw}/ollama/v1/chat/completions",
                          json={"model": "a", "messages": HELLO, "stream": True}) as r:
            next(r.iter_lines())
        stats = wait_until(lambda: (s := fake_stats(up))["cancelled"] == 1 and s, what="upstream cancel")
        assert stats["active"] == 0 and stats["completed"] == 0


def test_no_backend_up_answers_503(out_dir, tmp_path):
    port = free_port()
    env = gateway_env(tmp_path, port, OLLAMA_BASE_URL=f"http://127.0.0.1:{free_port()}")
    with running(["app.py"], f"http://127.0.0.1:{port}/health", env=env, log=out_dir / "gw-down.log"):
        gw = f"http://127.0.0.1:{port}"
        r = httpx.post(f"{gw}/ollama/v1/chat/completions", json={"model": "a", "messages": HELLO})
        assert r.status_code == 503 and r.headers["retry-after"]
        assert r.json()["error"]["code"] == "service_unavailable"
        health = httpx.get(f"{gw}/health").json()
        assert health["status"] == "degraded" and not health["backends"][0]["healthy"]
        status = httpx.get(f"{gw}/ollama/status").json()
        assert status["ollama"]["reachable"] is False


def test_model_pulled_later_is_found_without_restart(out_dir, tmp_path):
    """Within the lists' TTL (0.5 s here): an unknown name forces no fetch, the background refresh finds it."""
    with fake_ollama(out_dir, "a:latest") as up, gateway(out_dir, tmp_path, up) as gw:
        assert httpx.post(f"{gw}/ollama/v1/chat/completions", json={"model": "new", "messages": HELLO}).status_code == 404
        control(up, models=["a:latest", "new:latest"])
        wait_until(lambda: httpx.post(f"{gw}/ollama/v1/chat/completions",
                                      json={"model": "new", "messages": HELLO}).status_code == 200,
                   timeout=10, what="the pulled model served")


@contextmanager
def black_hole():
    """A URL whose port accepts connections (the kernel does, up to its backlog) and never answers:
    a tunnel whose far end is gone."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_a_black_holed_upstream_adds_no_latency_to_models_served_elsewhere(out_dir, tmp_path):
    """The lists go stale every 0.2 s and the black hole's fetch takes its full 5 s timeout each time:
    requests for the model the gateway's Ollama serves never wait for it."""
    port = free_port()
    gw = f"http://127.0.0.1:{port}"
    with black_hole() as hole, fake_ollama(out_dir, "a:latest") as up:
        env = relay_gateway_env(tmp_path, port, up, OLLABRIDGE_UPSTREAMS=hole, OLLABRIDGE_MODELS_TTL="0.2")
        # Ready when it serves at all: /health itself asks every backend (3 s for the black hole).
        with running(["app.py"], f"{gw}/openapi.json", env=env, log=out_dir / "gw-black-hole.log"), \
                httpx.Client(base_url=gw, timeout=30) as client:
            slowest, served, until = 0.0, 0, time.monotonic() + 1.5  # several TTLs, from the first request
            while time.monotonic() < until:
                began = time.monotonic()
                reply = client.post("/ollama/api/chat", json={"model": "a", "messages": HELLO, "stream": False})
                slowest = max(slowest, time.monotonic() - began)
                assert reply.status_code == 200, reply.text
                served += 1
            assert slowest < 2.0, f"one of {served} requests took {slowest:.2f}s"
            upstream = next(b for b in client.get("/health", timeout=30).json()["backends"] if b["name"] == "upstream-1")
            assert upstream["healthy"] is False and upstream["models"] == []
