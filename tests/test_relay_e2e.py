"""GPU nodes end to end: a gateway and node agents as real processes on loopback, each node
backed by a scripted Ollama-API server (tests/fake_ollama.py)."""

from __future__ import annotations

import asyncio
import json
import signal
import stat
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest

from tests.relay_support import (AUTH, control, fake_ollama, fake_stats, gateway, node, pair, relay_nodes,
                                 relay_stats, save_credential, wait_connected, wait_until)

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def env(out_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    logs = out_dir / "relay"
    logs.mkdir(exist_ok=True)
    tmp = tmp_path_factory.mktemp("relay")
    with ExitStack() as stack:
        cpu = stack.enter_context(fake_ollama(logs, "cpu:latest,shared:latest"))
        gpu = stack.enter_context(fake_ollama(logs, "gpu-m:latest", "--chunks", "5", "--max-chunks", "2000000"))
        gw = stack.enter_context(gateway(logs, tmp / "data", cpu))
        yield SimpleNamespace(logs=logs, cpu=cpu, gpu=gpu, gw=gw, tmp=tmp)


@pytest.fixture(scope="module")
def main_node(env):
    """A node paired the real way: the agent shows a code, the owner approves it over HTTP."""
    creds = env.tmp / "main-creds.json"
    with node(env.logs, env.gw, env.gpu, creds, "main", slots=4, connected=False) as agent:
        code = agent.code()
        answer = httpx.post(f"{env.gw}/device/approve", headers=AUTH,
                            json={"user_code": code.lower().replace("-", "")})  # case and dash do not matter
        assert answer.status_code == 200, answer.text
        wait_connected(env.gw, "main", agent)
        yield SimpleNamespace(agent=agent, creds=creds)


def client(gw: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw}/ollama/v1", api_key="unused", max_retries=0, timeout=30)


def test_paired_node_serves_sse_ndjson_and_lists(env, main_node) -> None:
    saved = json.loads(main_node.creds.read_text())[env.gw]
    assert saved["node_token"].startswith("obn_")
    assert stat.S_IMODE(main_node.creds.stat().st_mode) == 0o600
    assert httpx.get(f"{env.gw}/device/nodes").status_code == 401  # the owner's list
    listed = httpx.get(f"{env.gw}/device/nodes", headers=AUTH).json()["nodes"]
    mine = next(n for n in listed if n["name"] == "main")
    assert mine["connected"] and mine["models"] == ["gpu-m:latest"] and mine["created"] and mine["last_seen"]

    oai = client(env.gw)
    stream = oai.chat.completions.create(model="gpu-m", messages=MSG, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "tok0 tok1 tok2 tok3 tok4 "
    whole = oai.chat.completions.create(model="gpu-m:latest", messages=MSG)
    assert whole.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 " and whole.usage.completion_tokens == 5

    with httpx.stream("POST", f"{env.gw}/ollama/api/chat", json={"model": "gpu-m", "messages": MSG}) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert [c["message"]["content"] for c in lines[:-1]] == [f"tok{i} " for i in range(5)]
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 5

    emb = oai.embeddings.create(model="gpu-m", input=["ab", "abcd"])
    assert [d.embedding[2] for d in emb.data] == [2.0, 4.0]
    shown = httpx.post(f"{env.gw}/ollama/api/show", json={"model": "gpu-m"}).json()
    assert shown["details"]["family"] == "fake"

    models = {m.id for m in oai.models.list().data}
    assert {"gpu-m:latest", "cpu:latest"} <= models
    tags = {m["name"] for m in httpx.get(f"{env.gw}/ollama/api/tags").json()["models"]}
    assert "gpu-m:latest" in tags
    status = relay_nodes(env.gw)
    assert [n["name"] for n in status] == ["main"] and status[0]["slots"] == 4
    stats = relay_stats(env.gw)
    assert stats["nodes_connected"] == 1 and stats["requests_total"] >= 5 and stats["tokens_relayed"] >= 15
    backends = httpx.get(f"{env.gw}/health").json()["backends"]
    assert any(b["kind"] == "node" and b["healthy"] for b in backends)


def test_node_models_come_and_go(env, main_node) -> None:
    control(env.gpu, models=["gpu-m:latest", "fresh:latest"])
    try:
        wait_until(lambda: "fresh:latest" in {m["name"] for m in httpx.get(
            f"{env.gw}/ollama/api/tags").json()["models"]}, 10, "new node model listed")
        reply = client(env.gw).chat.completions.create(model="fresh", messages=MSG)
        assert reply.choices[0].message.content.startswith("tok0")
    finally:
        control(env.gpu, models=["gpu-m:latest"])
    wait_until(lambda: "fresh:latest" not in {m.id for m in client(env.gw).models.list().data}, 10,
               "removed model gone")


def test_twenty_concurrent_streams_over_one_node(env) -> None:
    with fake_ollama(env.logs, "burst:latest", "--delay", "0.005") as ollama:
        save_credential(env.tmp / "burst.json", env.gw, pair(env.gw, "burst"))
        with node(env.logs, env.gw, ollama, env.tmp / "burst.json", "burst", slots=8):
            tokens = 100

            async def one(oai: openai.AsyncOpenAI) -> str:
                stream = await oai.chat.completions.create(model="burst", messages=MSG, stream=True,
                                                           max_tokens=tokens)
                return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

            async def burst() -> list[str]:
                oai = openai.AsyncOpenAI(base_url=f"{env.gw}/ollama/v1", api_key="x", max_retries=0, timeout=60)
                return await asyncio.gather(*(one(oai) for _ in range(20)))

            started = time.monotonic()
            texts = asyncio.run(burst())
            took = time.monotonic() - started
            expected = "".join(f"tok{i} " for i in range(tokens))
            assert texts == [expected] * 20
            stats = fake_stats(ollama)
            assert stats["completed"] == 20 and stats["max_active"] <= 8  # never past the node's slots
            print(f"\n20 streams x {tokens} tokens over one node (8 slots): {took:.2f}s, "
                  f"{20 * tokens / took:.0f} tokens/s")


def test_cancel_reaches_the_node(env, main_node) -> None:
    control(env.gpu, delay=0.02)
    try:
        before = fake_stats(env.gpu)["cancelled"]
        with httpx.stream("POST", f"{env.gw}/ollama/api/chat",
                          json={"model": "gpu-m", "messages": MSG, "options": {"num_predict": 5000}}) as r:
            lines = r.iter_lines()
            assert [json.loads(next(lines))["message"]["content"] for _ in range(3)] == ["tok0 ", "tok1 ", "tok2 "]
        wait_until(lambda: fake_stats(env.gpu)["cancelled"] == before + 1, 10, "NDJSON cancel at the node")
        stream = client(env.gw).chat.completions.create(model="gpu-m", messages=MSG, stream=True, max_tokens=5000)
        for _, _chunk in zip(range(3), stream):
            pass
        stream.close()
        wait_until(lambda: fake_stats(env.gpu)["cancelled"] == before + 2, 10, "SSE cancel at the node")
        wait_until(lambda: relay_stats(env.gw)["requests_in_flight"] == 0, 10, "nothing in flight")
    finally:
        control(env.gpu, delay=0)


def test_slow_client_does_not_stall_the_socket(env, main_node) -> None:
    """A client that stops reading holds back only its own stream (flow control), not the node."""
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", f"{env.gw}/ollama/api/chat",
                         json={"model": "gpu-m", "messages": MSG, "options": {"num_predict": 2000000}}) as stalled:
            assert stalled.status_code == 200  # headers read; the body is left unread
            for _ in range(3):
                started = time.monotonic()
                reply = client(env.gw).chat.completions.create(model="gpu-m", messages=MSG)
                assert reply.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 "
                assert time.monotonic() - started < 5
            # Buffers fill up, then the node's Ollama is held back: the count of chunks it sent stops.
            seen: list[int] = []

            def settled() -> bool:
                seen.append(fake_stats(env.gpu)["chunks"])
                return len(seen) > 10 and seen[-1] == seen[-10]
            wait_until(settled, 20, "the stalled stream held back at its source")
            assert fake_stats(env.gpu)["active"] == 1  # the stalled one waits, neither finished nor failed
            assert relay_stats(env.gw)["requests_in_flight"] == 1
    wait_until(lambda: relay_stats(env.gw)["requests_in_flight"] == 0, 10, "stalled stream cancelled")


@pytest.fixture
def victim(env):
    """A node serving long, slow streams, that a test may kill."""
    with fake_ollama(env.logs, "slow:latest", "--chunks", "1000", "--delay", "0.02") as ollama:
        creds = env.tmp / "victim.json"
        save_credential(creds, env.gw, pair(env.gw, "victim"))
        yield SimpleNamespace(ollama=ollama, creds=creds)


def _gone(env, name: str) -> None:
    wait_until(lambda: name not in [n["name"] for n in relay_nodes(env.gw)], 10, f"{name} gone")


def test_node_killed_mid_stream_sse_error_event(env, victim) -> None:
    with node(env.logs, env.gw, victim.ollama, victim.creds, "victim") as agent:
        stream = client(env.gw).chat.completions.create(model="slow", messages=MSG, stream=True)
        chunks = iter(stream)
        for _ in range(3):
            next(chunks)
        agent.kill()
        started = time.monotonic()
        with pytest.raises(openai.APIError, match="lost"):
            for _ in chunks:
                pass
        assert time.monotonic() - started < 3
    _gone(env, "victim")


def test_node_killed_mid_stream_ndjson_error_line(env, victim) -> None:
    with node(env.logs, env.gw, victim.ollama, victim.creds, "victim") as agent:
        with httpx.stream("POST", f"{env.gw}/ollama/api/chat", json={"model": "slow", "messages": MSG}) as r:
            lines = r.iter_lines()
            for _ in range(3):
                assert "tok" in next(lines)
            agent.kill()
            started = time.monotonic()
            rest = [json.loads(line) for line in lines if line]
        assert time.monotonic() - started < 3
        assert "error" in rest[-1] and "victim" in rest[-1]["error"]
    _gone(env, "victim")


def test_node_silent_for_three_heartbeats_is_dropped(env, victim) -> None:
    with node(env.logs, env.gw, victim.ollama, victim.creds, "victim") as agent:
        stream = client(env.gw).chat.completions.create(model="slow", messages=MSG, stream=True)
        chunks = iter(stream)
        next(chunks)
        agent.kill(signal.SIGSTOP)  # alive socket, silent node
        started = time.monotonic()
        try:
            with pytest.raises(openai.APIError, match="lost"):
                for _ in chunks:
                    pass
            assert time.monotonic() - started < 6  # heartbeat 1s: dead after 3 silent beats
            _gone(env, "victim")
        finally:
            agent.kill(signal.SIGKILL)


def test_node_lost_before_first_token_is_retried(env) -> None:
    """The node holds the request without answering and dies: the CPU Ollama answers instead."""
    with fake_ollama(env.logs, "shared:latest", "--hang") as hung:
        creds = env.tmp / "hanger.json"
        save_credential(creds, env.gw, pair(env.gw, "hanger"))
        with node(env.logs, env.gw, hung, creds, "hanger") as agent:
            cpu_before = fake_stats(env.cpu)["chats"]
            result: dict = {}

            def ask() -> None:
                try:
                    stream = client(env.gw).chat.completions.create(model="shared", messages=MSG, stream=True)
                    result["text"] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
                except Exception as exc:  # noqa: BLE001 - reported below
                    result["error"] = exc

            asker = threading.Thread(target=ask)
            asker.start()
            wait_until(lambda: fake_stats(hung)["active"] == 1, 10, "request held by the node")
            agent.kill()
            asker.join(15)
            assert result.get("text") == "tok0 tok1 tok2 tok3 tok4 ", result
            assert fake_stats(env.cpu)["chats"] == cpu_before + 1
        _gone(env, "hanger")


def test_revoke_closes_the_socket_and_the_token_dies(env) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    creds = env.tmp / "revokee.json"
    cred = pair(env.gw, "revokee")
    save_credential(creds, env.gw, cred)
    with node(env.logs, env.gw, env.gpu, creds, "revokee") as agent:
        assert httpx.delete(f"{env.gw}/device/nodes/{cred['node_id']}").status_code == 401
        started = time.monotonic()
        answer = httpx.delete(f"{env.gw}/device/nodes/{cred['node_id']}", headers=AUTH)
        assert answer.status_code == 200 and answer.json()["revoked"] is True
        assert agent.proc.wait(5) == 3  # the agent stops with a plain message
        assert time.monotonic() - started < 1.5
        assert "revoked" in agent.text()
        assert not json.loads(creds.read_text()).get(env.gw)  # its dead credential is forgotten
    assert "revokee" not in [n["name"] for n in httpx.get(f"{env.gw}/device/nodes", headers=AUTH).json()["nodes"]]
    ws_url = env.gw.replace("http://", "ws://") + "/relay/connect"
    with connect(ws_url, additional_headers={"Authorization": f"Bearer {cred['node_token']}"}) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(5)
    assert closed.value.rcvd.code == 4403


def _close_code(env, token: str | None, *frames) -> int:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with connect(env.gw.replace("http://", "ws://") + "/relay/connect", additional_headers=headers,
                 max_size=None) as ws:
        try:
            for frame in frames:
                ws.send(frame)
                if frame is HELLO:
                    assert json.loads(ws.recv(5))["type"] == "welcome"
            while True:
                frame = json.loads(ws.recv(5))
                assert frame["type"] in ("ping", "pong")
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else 1006


HELLO = json.dumps({"type": "hello", "protocol": 1, "name": "raw", "agent": "test", "models": [],
                    "capabilities": {"slots": 1}})


def test_bad_tokens_and_malformed_frames_close_the_socket(env, main_node) -> None:
    token = pair(env.gw, "raw")["node_token"]
    assert _close_code(env, None) == 4401
    assert _close_code(env, "obn_forged-token") == 4401
    assert _close_code(env, token, "this is not json") == 4400
    assert _close_code(env, token, b"\x00binary") == 4400
    assert _close_code(env, token, json.dumps({"type": "ping"})) == 4400  # anything before hello
    assert _close_code(env, token, json.dumps({"type": "hello", "protocol": 2})) == 4426
    assert _close_code(env, token, json.dumps([1, 2])) == 4400
    assert _close_code(env, token, HELLO, json.dumps({"type": "res", "data": {}})) == 4400  # no id
    assert _close_code(env, token, HELLO, json.dumps({"type": "teleport"})) == 4400
    assert _close_code(env, token, HELLO, "x" * (9 * 1024 * 1024)) == 1009  # over the 8 MiB frame limit
    # The gateway is unharmed: the real node still serves.
    assert httpx.get(f"{env.gw}/health").status_code == 200
    reply = client(env.gw).chat.completions.create(model="gpu-m", messages=MSG)
    assert reply.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 "
    assert [n["name"] for n in relay_nodes(env.gw)] == ["main"]


def test_device_endpoints_errors(env) -> None:
    flow = httpx.post(f"{env.gw}/device/start").json()  # the body is optional
    assert set(flow) >= {"device_code", "user_code", "verification_uri", "verification_uri_complete",
                         "expires_in", "interval"} and flow["expires_in"] == 600
    assert flow["verification_uri"] == f"{env.gw}/"
    poll = httpx.post(f"{env.gw}/device/token", json={"device_code": flow["device_code"]})
    assert poll.status_code == 400 and poll.json()["error"] == "authorization_pending"
    assert httpx.post(f"{env.gw}/device/token", json={"device_code": "forged"}).json()["error"] == "invalid_grant"
    no_auth = httpx.post(f"{env.gw}/device/approve", json={"user_code": flow["user_code"]})
    assert no_auth.status_code == 401 and "admin token" in no_auth.json()["error"]
    wrong = httpx.post(f"{env.gw}/device/approve", json={"user_code": flow["user_code"]},
                       headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "wrong" in wrong.json()["error"]
    missing = httpx.post(f"{env.gw}/device/approve", json={"user_code": "BBBB-BBBB"}, headers=AUTH)
    assert missing.status_code == 404 and "BBBB-BBBB" in missing.json()["error"]
    looked = httpx.get(f"{env.gw}/device/lookup", params={"user_code": flow["user_code"]}, headers=AUTH).json()
    assert looked["status"] == "pending"
    assert httpx.post(f"{env.gw}/device/deny", json={"user_code": flow["user_code"]}, headers=AUTH).status_code == 200
    wait_until(lambda: httpx.post(f"{env.gw}/device/token", json={"device_code": flow["device_code"]}
                                  ).json()["error"] == "access_denied", 5, "denied")


def test_agent_stops_when_denied(env) -> None:
    with node(env.logs, env.gw, env.gpu, env.tmp / "denied.json", "denied", connected=False) as agent:
        code = agent.code()
        httpx.post(f"{env.gw}/device/deny", json={"user_code": code}, headers=AUTH).raise_for_status()
        assert agent.proc.wait(10) == 4 and "denied" in agent.text()
    assert not (env.tmp / "denied.json").exists()
