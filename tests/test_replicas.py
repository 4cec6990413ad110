"""Several replicas (issue 16, points 2, 3, 5 and 6): a real redis-server, three gateway processes
behind a real HAProxy, all on loopback; GPU nodes as raw relay clients (the test writes their frames)
and as node agents with scripted Ollamas, connecting to one replica or through HAProxy.

The replicas share the data dir (one SQLite file, WAL), so a node paired on one is known to all of
them whichever store the build has; presence and forwarding are what is under test here."""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from harness.haproxy import HAProxy
from harness.redis import RedisServer
from ollabridge.replicas.auth import HEADER, replica_token
from tests.procs import free_port, running, stop
from tests.relay_support import (ADMIN, RawNode, fake_ollama, fake_stats, gateway_env, node, pair, save_credential,
                                 wait_until)

MSG = [{"role": "user", "content": "hi"}]


def _chunk(text: str) -> dict:
    return {"model": "only-b:latest", "message": {"role": "assistant", "content": text}, "done": False}


FINAL = {"model": "only-b:latest", "message": {"role": "assistant", "content": ""}, "done": True,
         "done_reason": "stop", "prompt_eval_count": 2, "eval_count": 3, "eval_duration": 1000}


@pytest.fixture(scope="module")
def env(out_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    logs = out_dir / "replicas"
    logs.mkdir(exist_ok=True)
    tmp = tmp_path_factory.mktemp("replicas")
    ports = [free_port() for _ in range(3)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    with ExitStack() as stack:
        redis = stack.enter_context(RedisServer(tmp / "redis"))
        cpu = stack.enter_context(fake_ollama(logs, "cpu:latest"))
        lb = HAProxy(tmp / "haproxy", urls, balance="leastconn")
        procs = []
        for port, url in zip(ports, urls):
            env = gateway_env(tmp / "data", port, cpu, OLLABRIDGE_REDIS_URL=redis.url, OLLABRIDGE_REPLICA_URL=url,
                              OLLABRIDGE_PUBLIC_URL=lb.url)
            procs.append(stack.enter_context(running(["app.py"], f"{url}/health", env=env,
                                                     log=logs / f"gateway-{port}.log", timeout=60)))
        stack.enter_context(lb)
        yield SimpleNamespace(logs=logs, tmp=tmp, urls=urls, ports=ports, procs=procs, lb=lb, redis=redis, cpu=cpu)


def _health(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=5).json()


def _nodes_seen(url: str) -> dict[str, str]:
    """Node name -> the URL of the replica holding it, as `url`'s /health lists them."""
    return {n["name"]: r["url"] for r in _health(url)["replicas"]["seen"] for n in r["nodes"]}


def _models(url: str) -> set[str]:
    return {m["id"] for m in httpx.get(f"{url}/v1/models", timeout=5).json()["data"]}


def _log_lines(log: Path, route_part: str) -> list[dict]:
    return [json.loads(line.split("ollabridge.access: ", 1)[1]) for line in log.read_text(errors="replace").splitlines()
            if "ollabridge.access: " in line and route_part in line]


@pytest.fixture(scope="module")
def raw_b(env):
    """A raw relay client on replica B (the second), serving `only-b:latest` with 1 slot."""
    token = pair(env.urls[1], "raw-b")["node_token"]
    with RawNode(env.urls[1], token, name="raw-b", models=("only-b:latest",), slots=1) as raw:
        for url in env.urls:
            wait_until(lambda: "only-b:latest" in _models(url), 10, f"only-b listed on {url}")
        yield raw


def _stream_on(url: str, lines: list[dict], stop_after: int | None = None, model: str = "only-b") -> None:
    with httpx.stream("POST", f"{url}/ollama/api/chat", json={"model": model, "messages": MSG},
                      timeout=30) as answer:
        assert answer.status_code == 200, answer.read()
        for line in answer.iter_lines():
            if line.strip():
                lines.append(json.loads(line))
                if stop_after is not None and len(lines) >= stop_after:
                    return  # the client goes away mid-stream


def test_a_node_on_one_replica_is_listed_everywhere_and_a_chat_on_another_streams_from_it(env, raw_b):
    a, b, c = env.urls
    b_id = _health(b)["replicas"]["id"]
    for url in (a, c):  # each replica's router has it, as a GPU node of replica B
        assert "only-b:latest" in {m["name"] for m in httpx.get(f"{url}/ollama/api/tags").json()["models"]}
        entry = next(x for x in _health(url)["backends"] if x["name"] == f"raw-b@{b_id}")
        assert entry["kind"] == "node" and entry["replica"] == b_id and entry["healthy"]
    lines: list[dict] = []
    with ThreadPoolExecutor(1) as pool:
        asked = pool.submit(_stream_on, a, lines)
        req = raw_b.recv("req")
        assert req["op"] == "chat" and req["body"]["model"] == "only-b"
        raw_b.res(req["id"], _chunk("from "))
        wait_until(lambda: lines, 10, "the first chunk streamed to A's client before the node finished")
        raw_b.res(req["id"], _chunk("B"))
        raw_b.res(req["id"], FINAL, done=True)
        asked.result(30)
    assert "".join(line["message"]["content"] for line in lines) == "from B" and lines[-1]["done"]
    # One log line on each side: A's names the remote node, B's the internal route and the node.
    a_line = wait_until(lambda: _log_lines(env.logs / f"gateway-{env.ports[0]}.log", '"/ollama/api/chat"'), 5, "A's line")
    assert a_line[-1]["status"] == 200 and a_line[-1]["backend"].startswith("raw-b@")
    assert a_line[-1]["tokens_out"] == 3
    b_line = wait_until(lambda: _log_lines(env.logs / f"gateway-{env.ports[1]}.log", "/internal/nodes/"), 5, "B's line")
    assert b_line[-1]["status"] == 200 and b_line[-1]["backend"] == "raw-b" and b_line[-1]["tokens_out"] == 3
    assert b_line[-1]["id"] == a_line[-1]["id"]  # one request id across the hop


def test_non_streamed_chats_and_embeddings_cross_replicas_too(env, raw_b):
    a, c = env.urls[0], env.urls[2]
    with ThreadPoolExecutor(1) as pool:
        asked = pool.submit(httpx.post, f"{c}/v1/chat/completions", timeout=30,
                            json={"model": "only-b", "messages": MSG})
        req = raw_b.recv("req")
        raw_b.res(req["id"], {**FINAL, "message": {"role": "assistant", "content": "whole"}}, done=True)
        reply = asked.result(30)
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == "whole"
        asked = pool.submit(httpx.post, f"{a}/ollama/api/embed", timeout=30, json={"model": "only-b", "input": "x"})
        req = raw_b.recv("req")
        assert req["op"] == "embed"
        raw_b.res(req["id"], {"model": "only-b:latest", "embeddings": [[0.25, 0.5]]}, done=True)
        reply = asked.result(30)
        assert reply.status_code == 200 and reply.json()["embeddings"] == [[0.25, 0.5]]


def test_every_replica_health_lists_every_replica_and_node(env, raw_b):
    for url in env.urls:
        seen = _health(url)["replicas"]["seen"]
        assert sorted(r["url"] for r in seen) == sorted(env.urls)
        assert _nodes_seen(url) == {"raw-b": env.urls[1]}


def test_a_client_gone_on_a_cancels_the_node_request_on_b_and_frees_its_slot(env, raw_b):
    a, b = env.urls[0], env.urls[1]
    lines: list[dict] = []
    with ThreadPoolExecutor(1) as pool:
        asked = pool.submit(_stream_on, a, lines, 1)
        rid = raw_b.recv("req")["id"]
        raw_b.res(rid, _chunk("partial "))
        asked.result(30)  # the client read one chunk and closed its connection
        assert raw_b.recv("cancel", 5)["id"] == rid  # through A's forward, B cancelled the node's request
        raw_b.send({"type": "res", "id": rid, "error": {"status": 499, "message": "cancelled"}, "done": True})

    def free() -> bool:
        node = next(x for x in _health(b)["backends"] if x["name"] == "raw-b")
        return node["in_flight"] == 0
    wait_until(free, 5, "B's node slot free again")
    # The slot serves the next request (1 slot: it would wait in B's queue otherwise).
    lines = []
    with ThreadPoolExecutor(1) as pool:
        asked = pool.submit(_stream_on, env.urls[2], lines)
        rid = raw_b.recv("req", 5)["id"]
        raw_b.res(rid, FINAL, done=True)
        asked.result(30)
    assert lines[-1]["done"]


def test_a_raw_node_through_haproxy_serves_chats_sent_through_haproxy_to_any_replica(env, raw_b):
    token = pair(env.urls[0], "raw-lb")["node_token"]
    with RawNode(env.lb.url, token, name="raw-lb", models=("via-lb:latest",), slots=2) as raw:
        for url in env.urls:
            wait_until(lambda: "via-lb:latest" in _models(url), 10, f"via-lb listed on {url}")
        with ThreadPoolExecutor(1) as pool:
            for i in range(3):  # least connections spreads them: whichever replica gets one, the node answers
                asked = pool.submit(httpx.post, f"{env.lb.url}/ollama/api/chat", timeout=30,
                                    json={"model": "via-lb", "messages": MSG, "stream": False})
                req = raw.recv("req")
                raw.res(req["id"], {**FINAL, "model": "via-lb:latest",
                                    "message": {"role": "assistant", "content": f"answer {i}"}}, done=True)
                reply = asked.result(30)
                assert reply.status_code == 200 and reply.json()["message"]["content"] == f"answer {i}"


def test_the_internal_endpoint_refuses_anyone_but_a_replica(env, raw_b):
    b = env.urls[1]
    node_id = next(n["node_id"] for r in _health(b)["replicas"]["seen"] for n in r["nodes"])
    url = f"{b}/internal/nodes/{node_id}/api/chat"
    body = {"model": "only-b:latest", "messages": MSG}
    for headers in ({}, {HEADER: "0" * 64}, {HEADER: replica_token("another-admin-token")},
                    {"Authorization": f"Bearer {ADMIN}"}):  # not even the admin token itself
        answer = httpx.post(url, json=body, headers=headers, timeout=5)
        assert answer.status_code == 401, (headers, answer.text)
    # Through the load balancer the internal routes do not exist at all.
    assert httpx.post(f"{env.lb.url}/internal/nodes/{node_id}/api/chat", json=body,
                      headers={HEADER: replica_token(ADMIN)}, timeout=5).status_code == 403
    # A replica's credential for a node not held here: a 503 the forwarder retries elsewhere, never a forward.
    answer = httpx.post(f"{env.urls[0]}/internal/nodes/{node_id}/api/chat", json=body,
                        headers={HEADER: replica_token(ADMIN)}, timeout=5)
    assert answer.status_code == 503 and "not connected to this replica" in answer.json()["error"]
    assert "/internal" not in httpx.get(f"{b}/openapi.json").text


def test_redis_down_each_replica_serves_with_what_it_holds_and_says_so(env, raw_b):
    env.redis.stop()
    try:
        for url in env.urls:
            wait_until(lambda: not _health(url)["replicas"]["redis_connected"], 5, f"{url} noticing Redis gone")
        detail = _health(env.urls[0])["replicas"]["detail"]
        assert "Redis does not answer" in detail
        # Replica A still serves B's node (its last view), and its own CPU backend.
        lines: list[dict] = []
        with ThreadPoolExecutor(1) as pool:
            asked = pool.submit(_stream_on, env.urls[0], lines)
            raw_b.res(raw_b.recv("req", 5)["id"], FINAL, done=True)
            asked.result(30)
        assert lines[-1]["done"]
        reply = httpx.post(f"{env.urls[2]}/ollama/api/chat", json={"model": "cpu", "messages": MSG, "stream": False})
        assert reply.status_code == 200
    finally:
        env.redis.start()
    for url in env.urls:
        wait_until(lambda: _health(url)["replicas"]["redis_connected"], 10, f"{url} back on Redis")
    assert _nodes_seen(env.urls[2]) == {"raw-b": env.urls[1]}


def test_a_node_frozen_behind_the_hop_is_given_up_by_its_replica_and_the_stream_resumes(env, raw_b):
    """A node agent SIGSTOPped mid-answer (socket open, silent): its own replica's stall watch times the
    forwarded stream as it times its own, gives the node up within seconds (before 3 missed heartbeats),
    and the forwarding replica resumes the stream on the other node with the model."""
    a, b, c = env.urls
    with ExitStack() as stack:
        gpus, agents = {}, {}
        for name, owner in (("fb", b), ("fc", c)):
            gpus[name] = stack.enter_context(fake_ollama(env.logs, "frz:latest", "--chunks", "30", "--delay", "0.1"))
            creds = env.tmp / f"{name}-creds.json"
            save_credential(creds, owner, pair(owner, name))
            agents[name] = stack.enter_context(node(env.logs, owner, gpus[name], creds, name, 2, False))
        wait_until(lambda: {"fb", "fc"} <= set(_nodes_seen(a)), 15, "both nodes seen on A")
        lines: list[dict] = []
        with ThreadPoolExecutor(1) as pool:
            asked = pool.submit(_stream_on, a, lines, None, "frz")
            wait_until(lambda: len(lines) >= 5, 20, "five chunks on the client")
            frozen = next(n for n, gpu in gpus.items() if fake_stats(gpu)["active"])
            agents[frozen].kill(signal.SIGSTOP)
            try:
                asked.result(60)
            finally:
                agents[frozen].kill(signal.SIGCONT)
        text = "".join(line.get("message", {}).get("content", "") for line in lines)
        assert not any("error" in line for line in lines) and lines[-1]["done"]
        assert text == "".join(f"tok{i} " for i in range(30))
        owner_log = env.logs / f"gateway-{env.ports[env.urls.index(b if frozen == 'fb' else c)]}.log"
        assert "a stream silent for" in owner_log.read_text(errors="replace")  # the stall watch, not heartbeats


def test_a_replica_killed_mid_stream_its_stream_resumes_and_its_node_reconnects_and_serves(env, raw_b):
    """Two node agents through HAProxy (least connections: each on its own replica); a stream on the
    third replica goes to one of them; that node's replica is SIGKILLed mid-stream; the stream ends
    whole on the other node, and the orphaned node reconnects through HAProxy and serves again."""
    with ExitStack() as stack:
        gpus = {}
        for name in ("gx", "gy"):
            gpu = stack.enter_context(fake_ollama(env.logs, f"shared-m:latest,{name}-only:latest", "--chunks", "30",
                                                  "--delay", "0.2"))
            creds = env.tmp / f"{name}-creds.json"
            save_credential(creds, env.lb.url, pair(env.urls[0], name))
            gpus[name] = gpu
            stack.enter_context(node(env.logs, env.lb.url, gpu, creds, name, 2, False))
            wait_until(lambda: name in _nodes_seen(env.urls[0]), 15, f"{name} connected through HAProxy")
        holders = {n: u for n, u in _nodes_seen(env.urls[0]).items() if n in gpus}
        free = [u for u in env.urls if u not in holders.values()]
        assert len(set(holders.values())) == 2 and free, holders  # leastconn put them apart
        client = free[0]
        for name in gpus:
            wait_until(lambda: f"{name}-only:latest" in _models(client), 10, f"{name} listed on {client}")
        lines: list[dict] = []

        def chat() -> None:
            with httpx.stream("POST", f"{client}/ollama/api/chat", json={"model": "shared-m", "messages": MSG},
                              timeout=60) as answer:
                for line in answer.iter_lines():
                    if line.strip():
                        lines.append(json.loads(line))
        with ThreadPoolExecutor(1) as pool:
            asked = pool.submit(chat)
            wait_until(lambda: len(lines) >= 5, 20, "five chunks on the client")
            serving = next(n for n, gpu in gpus.items() if fake_stats(gpu)["active"])
            victim = env.urls.index(holders[serving])
            stop(env.procs[victim], sig=signal.SIGKILL)
            killed = time.monotonic()
            asked.result(60)
        text = "".join(line.get("message", {}).get("content", "") for line in lines if not line.get("error"))
        assert not any("error" in line for line in lines), lines[-1]
        assert text == "".join(f"tok{i} " for i in range(30)) and lines[-1]["done"]
        assert _health(client)["streams"]["resumed"] >= 1
        # The orphan reconnects through HAProxy to a live replica and serves its own model again.
        live = [u for i, u in enumerate(env.urls) if i != victim]
        for url in live:  # its new replica publishes it; the other one sees it within a refresh
            wait_until(lambda: f"{serving}-only:latest" in _models(url), 20, f"{serving} back on {url}")
        assert time.monotonic() - killed < 10  # the agent's first backoff (1-2 s) and a presence refresh
        for _ in live:  # whichever replica HAProxy picks
            reply = httpx.post(f"{env.lb.url}/ollama/api/chat", timeout=30,
                               json={"model": f"{serving}-only", "messages": MSG, "stream": False})
            assert reply.status_code == 200 and reply.json()["done"], reply.text
