"""Relay pieces in process: frame validation, the agent's URLs and credentials, kicks from threads."""

from __future__ import annotations

import asyncio
import json
import stat
import threading

import pytest

from ollabridge.node.banner import big
from ollabridge.node.credentials import Credentials, cloud_http, relay_url
from ollabridge.relay import protocol as p
from ollabridge.relay.hub import RelayHub


def _hello(**over):
    frame = {"type": "hello", "protocol": 1, "name": "n", "agent": "a", "models": [{"name": "m:1b"}],
             "capabilities": {"gpu": "T4", "vram_mb": 15360, "slots": 4, "ops": ["chat", "embed", "x"]}}
    frame.update(over)
    return p.check_hello(p.parse(json.dumps(frame)))


def test_hello_validation() -> None:
    hello = _hello()
    assert hello.slots == 4 and hello.gpu == "T4" and hello.ops == ["chat", "embed"]
    assert hello.models[0]["model"] == "m:1b"
    with pytest.raises(p.ProtocolError) as version:
        _hello(protocol=2)
    assert version.value.code == p.CLOSE_UNSUPPORTED
    for bad in ({"capabilities": {"slots": 0}}, {"capabilities": {"slots": True}}, {"models": [{"size": 1}]},
                {"models": "m"}, {"name": 5}, {"type": "ping"}):
        with pytest.raises(p.ProtocolError) as info:
            _hello(**bad)
        assert info.value.code == p.CLOSE_PROTOCOL_ERROR


def test_frame_validation() -> None:
    with pytest.raises(p.ProtocolError, match="binary"):
        p.parse(b"{}")
    with pytest.raises(p.ProtocolError) as big_frame:
        p.parse("x" * 101, max_bytes=100)
    assert big_frame.value.code == p.CLOSE_TOO_BIG
    with pytest.raises(p.ProtocolError, match="unknown frame type"):
        p.parse('{"type": "req"}')  # a node never sends req
    res = p.check_node_frame(p.parse('{"type": "res", "id": "r1", "data": {"done": false}, "done": false}'))
    assert res["data"] == {"done": False}
    err = p.check_node_frame(p.parse('{"type": "res", "id": "r1", "error": {"status": 99, "message": "x"}}'))
    assert err["done"] is True and err["error"]["status"] == 502
    for bad in ('{"type": "res", "id": "", "data": {}}', '{"type": "res", "id": "r", "data": []}',
                '{"type": "res", "id": "r", "data": {}, "done": "yes"}', '{"type": "hello", "protocol": 1}'):
        with pytest.raises(p.ProtocolError):
            p.check_node_frame(p.parse(bad))
    assert p.check_cloud_frame(p.parse('{"type": "credit", "id": "r1", "n": 3}', allowed=p.CLOUD_TYPES))["n"] == 3
    with pytest.raises(p.ProtocolError):
        p.check_cloud_frame(p.parse('{"type": "req", "id": "r1", "op": "pull", "body": {}}', allowed=p.CLOUD_TYPES))


def test_answers_are_checked_before_the_gateway_reads_them() -> None:
    chunk = p.check_answer("chat", {"eval_count": 5.0, "prompt_eval_count": 2, "done": True,
                                    "message": {"content": "x", "tool_calls": [{"function": {"name": "f"}}]}}, False)
    assert chunk["eval_count"] == 5 and type(chunk["eval_count"]) is int and chunk["done"] is False
    for bad in ({"eval_count": True}, {"eval_duration": float("nan")}, {"eval_count": 2**64}, {"message": []},
                {"message": {"images": [1]}}, {"message": {"tool_calls": [{"function": {"arguments": 1}}]}},
                {"created_at": 3}, {"done": "yes"}, {"context": ["a"]}):
        with pytest.raises(p.BadAnswer):
            p.check_answer("chat", bad, True)
    with pytest.raises(p.BadAnswer):
        p.check_answer("embeddings", {"embedding": [float("inf")]}, True)
    with pytest.raises(p.BadAnswer):
        p.check_answer("show", {"details": "x"}, True)
    assert p.check_answer("show", {"details": {}, "extra": [1]}, True) == {"details": {}, "extra": [1]}
    assert _hello(capabilities={"slots": 1, "vram_mb": float("inf")}).vram_mb is None
    assert p.close_reason("é" * 100).encode() == ("é" * 61).encode()


def test_agent_urls_credentials_and_code(tmp_path) -> None:
    assert cloud_http("https://me-x.hf.space/") == "https://me-x.hf.space"
    assert cloud_http("me-x.hf.space") == "https://me-x.hf.space"
    assert cloud_http("wss://me-x.hf.space/relay/connect") == "https://me-x.hf.space"
    assert cloud_http("http://127.0.0.1:7860/ollama/v1") == "http://127.0.0.1:7860"
    assert relay_url("https://me-x.hf.space") == "wss://me-x.hf.space/relay/connect"
    assert relay_url("http://127.0.0.1:7860") == "ws://127.0.0.1:7860/relay/connect"
    creds = Credentials(tmp_path / "sub" / "creds.json")
    creds.put("https://a.hf.space/", {"node_id": "n1", "node_token": "t1"})
    creds.put("http://b:1", {"node_id": "n2", "node_token": "t2"})
    assert creds.get("https://a.hf.space")["node_id"] == "n1" and creds.get("http://b:1/")["node_token"] == "t2"
    assert stat.S_IMODE(creds.path.stat().st_mode) == 0o600
    creds.put("https://a.hf.space", None)
    assert creds.get("https://a.hf.space") is None and creds.get("http://b:1")
    art = big("BCDF-GHJK")
    assert len(art.splitlines()) == 5 and "█" in art


class _StubNode:
    def __init__(self) -> None:
        self.node_id = "node_1"
        self.closed_with = None
        self.done = threading.Event()

    def close_soon(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason, threading.current_thread())
        self.done.set()


class _StubRouter:
    def remove(self, node) -> None:
        pass

    def notify(self) -> None:
        pass


async def test_kick_from_another_thread_runs_on_the_loop() -> None:
    hub = RelayHub(_StubRouter(), pairing=None)
    hub.start()
    stub = _StubNode()
    hub.nodes["node_1"] = stub  # type: ignore[assignment]
    kicker = threading.Thread(target=hub.kick, args=("node_1", p.CLOSE_REVOKED, "revoked"))
    kicker.start()
    kicker.join()
    await asyncio.wait_for(asyncio.to_thread(stub.done.wait), 1)
    assert stub.closed_with[:2] == (p.CLOSE_REVOKED, "revoked")
    assert stub.closed_with[2] is threading.main_thread() and "node_1" not in hub.nodes


async def test_agent_refuses_past_its_slots() -> None:
    from ollabridge.node.ollama import LocalOllama
    from ollabridge.node.serving import Requests

    ollama = LocalOllama("http://127.0.0.1:9")
    requests = Requests(ollama, 1, asyncio.Queue())
    busy = asyncio.create_task(asyncio.Event().wait())
    requests.active["r1"] = (busy, None)  # type: ignore[assignment]
    requests.start({"type": "req", "id": "r2", "op": "chat", "body": {}})
    frame = json.loads(requests.out.get_nowait())
    assert frame["id"] == "r2" and frame["done"] and frame["error"]["status"] == 503
    busy.cancel()
    await ollama.close()
