"""Ollama's own clients as judges of `/ollama/api/generate` and the rest of the native surface: the
`ollama` client's `generate` (whole, streamed, images, raw, think, unload), LangChain's `OllamaLLM`
and `ChatOllama`, `/api/version` and `/api/ps` as Open WebUI reads them, in front of scripted Ollamas
(tests/fake_ollama.py), through a paired node agent and an old node that cannot `generate`, and
against the real in-box engine."""

from __future__ import annotations

import base64
import json
import re
import threading
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import httpx
import ollama
import pytest

from tests.relay_support import fake_ollama, gateway, node, pair, save_credential, wait_connected

TOKENS = "tok0 tok1 tok2 tok3 tok4 "
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8ff"
                    "ff3f0005fe02fea7d605a20000000049454e44ae426082")


def open_webui_version(version: str) -> tuple[int, ...]:
    """How Open WebUI compares backends' versions (backend/open_webui/routers/ollama.py)."""
    return tuple(map(int, re.sub(r"^v|-.*", "", version).split(".")))


@contextmanager
def old_node(gw: str, token: str, models: list[str], ops: list[str], version: str) -> Iterator[list[str]]:
    """A node of the relay protocol (docs/relay-protocol.md) written by hand, as an older agent: its
    hello lists `ops` only; it answers `chat` with "old node says hi" and anything else with a 501.
    Yields the ops of every `req` it got."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    seen: list[str] = []
    stop = threading.Event()
    with connect(gw.replace("http://", "ws://") + "/relay/connect",
                 additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        def send(frame: dict) -> None:
            ws.send(json.dumps(frame))

        def serve() -> None:
            while not stop.is_set():
                try:
                    frame = json.loads(ws.recv(0.2))
                except TimeoutError:
                    continue
                except ConnectionClosed:
                    return
                if frame["type"] == "ping":
                    send({"type": "pong", "t": frame.get("t")})
                elif frame["type"] == "req":
                    seen.append(frame["op"])
                    rid, model = frame["id"], frame["body"].get("model")
                    if frame["op"] != "chat":
                        send({"type": "res", "id": rid, "done": True, "error": {"status": 501, "message": "unknown op"}})
                        continue
                    send({"type": "res", "id": rid, "done": False, "data": {
                        "model": model, "created_at": "2026-01-01T00:00:00Z",
                        "message": {"role": "assistant", "content": "old node says hi"}, "done": False}})
                    send({"type": "res", "id": rid, "done": True, "data": {
                        "model": model, "created_at": "2026-01-01T00:00:00Z",
                        "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
                        "prompt_eval_count": 1, "eval_count": 1}})

        send({"type": "hello", "protocol": 1, "name": "old-node", "agent": "old-agent/0.0.1",
              "models": [{"name": m, "model": m, "size": 1, "details": {"family": "old"}} for m in models],
              "capabilities": {"slots": 2, "ops": ops, "ollama_version": version}})
        assert json.loads(ws.recv(5))["type"] == "welcome"
        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield seen
        finally:
            stop.set()
            thread.join(5)


@pytest.fixture(scope="module")
def env(out_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A gateway with its Ollama (0.14.1) and an upstream (0.13.5-rc1), a paired node agent whose
    Ollama (0.15.0) has `gpu-m`, and an old node (Ollama 0.12.11) without `generate` in its ops."""
    logs = out_dir / "clients-ollama"
    logs.mkdir(exist_ok=True)
    tmp = tmp_path_factory.mktemp("clients-ollama")
    with ExitStack() as stack:
        cpu = stack.enter_context(fake_ollama(logs, "fake:latest,deep-think:latest,shared:latest",
                                              "--version", "0.14.1"))
        upstream = stack.enter_context(fake_ollama(logs, "up-m:latest", "--version", "0.13.5-rc1"))
        gpu = stack.enter_context(fake_ollama(logs, "gpu-m:latest", "--version", "0.15.0"))
        gw = stack.enter_context(gateway(logs, tmp / "data", cpu, OLLABRIDGE_UPSTREAMS=upstream))
        save_credential(tmp / "creds.json", gw, pair(gw, "gen-node"))
        stack.enter_context(node(logs, gw, gpu, tmp / "creds.json", "gen-node"))
        old = stack.enter_context(old_node(gw, pair(gw, "old-node")["node_token"],
                                           ["old-only:latest", "shared:latest"], ["chat", "show"], "0.12.11"))
        wait_connected(gw, "old-node")
        yield SimpleNamespace(cpu=cpu, upstream=upstream, gpu=gpu, gw=gw, old=old,
                              client=ollama.Client(host=f"{gw}/ollama", timeout=30))


def last(up: str, op: str = "generate") -> dict:
    return httpx.get(f"{up}/_last").json().get(op) or {}


def test_generate_whole_and_streamed(env):
    reply = env.client.generate(model="fake", prompt="Why is the sky blue?", system="Be brief.",
                                options={"num_predict": 4, "temperature": 0})
    assert reply.response == "tok0 tok1 tok2 tok3 " and reply.done and reply.done_reason == "stop"
    assert reply.context == [1, 2, 3] and reply.eval_count == 4 and reply.model == "fake"
    sent = last(env.cpu)
    assert sent["prompt"] == "Why is the sky blue?" and sent["system"] == "Be brief."
    assert sent["options"] == {"num_predict": 4, "temperature": 0}

    parts = list(env.client.generate(model="fake", prompt="hi", stream=True))
    assert "".join(p.response for p in parts) == TOKENS and len(parts) == 6
    assert parts[-1].done and parts[-1].context == [1, 2, 3] and not any(p.done for p in parts[:-1])
    # `default` is the model the gateway picks.
    assert env.client.generate(model="default", prompt="hi").response == TOKENS

    with pytest.raises(ollama.ResponseError) as missing:
        env.client.generate(model="no-such-model", prompt="hi")
    assert missing.value.status_code == 404


def test_generate_images_raw_format_think_and_unload(env):
    assert env.client.generate(model="fake", prompt="What is this?", images=[PNG]).response == TOKENS
    assert last(env.cpu)["images"] == [base64.b64encode(PNG).decode()]

    env.client.generate(model="fake", prompt="<start_of_turn>user\nhi<end_of_turn>\n", raw=True, format="json",
                        keep_alive="10m", suffix=" end")
    sent = last(env.cpu)
    assert sent["raw"] is True and sent["format"] == "json" and sent["keep_alive"] == "10m"
    assert sent["suffix"] == " end" and sent["prompt"].startswith("<start_of_turn>")

    parts = list(env.client.generate(model="deep-think", prompt="hi", think=True, stream=True))
    assert parts[0].thinking == "hmm " and "".join(p.response for p in parts) == TOKENS

    # Open WebUI unloads a model this way.
    unloaded = env.client.generate(model="fake", prompt="", keep_alive=0)
    assert unloaded.done and unloaded.done_reason == "unload" and unloaded.response == ""


def test_langchain_ollama(env):
    from langchain_ollama import ChatOllama, OllamaLLM

    llm = OllamaLLM(model="fake", base_url=f"{env.gw}/ollama", num_predict=3)
    assert llm.invoke("Tell me a joke") == "tok0 tok1 tok2 "
    assert "".join(llm.stream("Tell me a joke")) == "tok0 tok1 tok2 "
    assert last(env.cpu)["prompt"] == "Tell me a joke"

    chat = ChatOllama(model="fake", base_url=f"{env.gw}/ollama", num_predict=2)
    assert chat.invoke("hi").content == "tok0 tok1 "

    def get_weather(city: str) -> str:
        """Weather in a city."""
        return "sunny"

    called = chat.bind_tools([get_weather]).invoke("Weather in Rome?")
    assert [(c["name"], c["args"]) for c in called.tool_calls] == [("get_weather", {"city": "x"})]


def test_generate_and_ps_through_a_node(env):
    parts = list(env.client.generate(model="gpu-m", prompt="hi", stream=True, options={"num_predict": 3}))
    assert "".join(p.response for p in parts) == "tok0 tok1 tok2 " and parts[-1].context == [1, 2, 3]
    assert last(env.gpu)["prompt"] == "hi"  # the node's Ollama served it
    assert env.client.generate(model="gpu-m", prompt="again").response == TOKENS

    loaded = {m.model: m for m in env.client.ps().models}
    assert "gpu-m:latest" in loaded and loaded["gpu-m:latest"].size > 0  # what the node has loaded
    raw = httpx.get(f"{env.gw}/ollama/api/ps").json()["models"]
    for entry in raw:  # as Open WebUI reads them
        assert entry["name"] and entry["model"]
        datetime.fromisoformat(entry["expires_at"])


def test_a_node_without_generate_is_never_sent_one(env):
    chat = env.client.chat(model="old-only", messages=[{"role": "user", "content": "hi"}])
    assert chat.message.content == "old node says hi"
    with pytest.raises(ollama.ResponseError) as refused:
        env.client.generate(model="old-only", prompt="hi")
    assert refused.value.status_code == 503 and "older agent" in refused.value.error

    # A model the old node shares with the gateway's Ollama: chat may go to the node, generate never does.
    assert env.client.chat(model="shared", messages=[{"role": "user", "content": "hi"}]).message.content
    assert env.client.generate(model="shared", prompt="hi").response == TOKENS
    assert last(env.cpu)["model"] == "shared"
    assert "generate" not in env.old and "chat" in env.old


def test_version_root_and_head(env):
    version = httpx.get(f"{env.gw}/ollama/api/version").json()["version"]
    assert version == "0.12.11"  # the lowest of every backend's, the old node's included
    assert open_webui_version(version) == (0, 12, 11)
    assert httpx.head(f"{env.gw}/ollama/api/version").status_code == 200
    root = httpx.get(f"{env.gw}/ollama/")
    assert root.status_code == 200 and root.text == "Ollama is running"
    assert httpx.head(f"{env.gw}/ollama").status_code == 200 and httpx.head(f"{env.gw}/").status_code == 200
    assert httpx.head(f"{env.gw}/ollama/api/tags").status_code == 200  # as Ollama answers it


def test_in_box_engine_generate_raw(gateway_url):
    client = ollama.Client(host=f"{gateway_url}/ollama", timeout=120)
    prompt = "The capital of France is"
    reply = client.generate(model="gemma3:270m", prompt=prompt, raw=True, options={"num_predict": 8, "temperature": 0})
    assert reply.response.strip() and reply.done and 0 < reply.eval_count <= 8
    parts = list(client.generate(model="gemma3:270m", prompt=prompt, raw=True, stream=True,
                                 options={"num_predict": 8, "temperature": 0}))
    assert "".join(p.response for p in parts) == reply.response  # temperature 0: the same tokens
    version = httpx.get(f"{gateway_url}/ollama/api/version").json()["version"]
    assert open_webui_version(version)
