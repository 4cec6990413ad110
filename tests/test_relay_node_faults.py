"""A node cannot break the gateway, and its slots are honest: a raw WebSocket node (tests/relay_support.py
RawNode) that sends bad values, and that holds its slot after a cancel, behind a real gateway process,
asked by real clients (the openai SDK, the ollama client, httpx)."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import ollama
import openai
import pytest

from tests.procs import free_port
from tests.relay_support import RawNode, fake_ollama, gateway, pair, wait_model, wait_until

MSG = [{"role": "user", "content": "hi"}]
GOOD_FINAL = {"model": "raw:latest", "created_at": "2026-01-01T00:00:00Z",
              "message": {"role": "assistant", "content": "fine"}, "done": True, "done_reason": "stop",
              "prompt_eval_count": 2.0, "eval_count": 5.0, "eval_duration": 1000.0, "total_duration": 2000}


@pytest.fixture(scope="module")
def env(out_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    logs = out_dir / "node-faults"
    logs.mkdir(exist_ok=True)
    tmp = tmp_path_factory.mktemp("node-faults")
    port = free_port()
    with fake_ollama(logs, "cpu:latest") as cpu, gateway(logs, tmp / "data", cpu, port=port) as gw:
        yield SimpleNamespace(gw=gw, cpu=cpu, token=pair(gw, "raw")["node_token"], log=logs / f"gateway-{port}.log",
                              oai=openai.OpenAI(base_url=f"{gw}/v1", api_key="x", max_retries=0, timeout=30))


def _log_line(log: Path, rid: str) -> dict:
    def find():
        for line in log.read_text(errors="replace").splitlines():
            if "ollabridge.access: " in line and f'"id":"{rid}"' in line:
                return json.loads(line.split("ollabridge.access: ", 1)[1])
        return None
    return wait_until(find, 5, f"the log line of {rid}")


def _serve_good(env, node: RawNode, pool: ThreadPoolExecutor) -> None:
    """The node's socket still serves: a good answer reaches the client, its counts made ints."""
    asked = pool.submit(env.oai.chat.completions.create, model="raw", messages=MSG)
    node.res(node.recv("req")["id"], GOOD_FINAL, done=True)
    reply = asked.result(30)
    assert reply.choices[0].message.content == "fine"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (2, 5)


# -- point 6: every value a node sends is checked ------------------------------------------------
BAD_FINALS = {
    "eval_count text": {"eval_count": "many"},
    "negative count": {"prompt_eval_count": -3},
    "infinite duration": {"eval_duration": math.inf},  # json.dumps writes Infinity, which JSON parsers take
    "message text": {"message": "hello"},
    "content list": {"message": {"role": "assistant", "content": ["a", "b"]}},
    "tool_calls text": {"message": {"role": "assistant", "content": "", "tool_calls": "call"}},
    "tool call shape": {"message": {"role": "assistant", "content": "", "tool_calls": [{"function": "f"}]}},
    "done_reason list": {"done_reason": ["stop"]},
}


@pytest.mark.parametrize("case", list(BAD_FINALS))
def test_a_bad_value_fails_that_request_with_502_and_a_log_line(env, case):
    rid = f"bad-final-{case.replace(' ', '-')}"
    with RawNode(env.gw, env.token) as node, ThreadPoolExecutor(1) as pool:
        wait_model(env.gw, "raw:latest")
        asked = pool.submit(env.oai.chat.completions.create, model="raw", messages=MSG,
                            extra_headers={"X-Request-ID": rid})
        req = node.recv("req")
        node.res(req["id"], {"message": {"role": "assistant", "content": "partial "}, "done": False})
        node.res(req["id"], {**GOOD_FINAL, **BAD_FINALS[case]}, done=True)
        with pytest.raises(openai.APIStatusError) as failed:
            asked.result(30)
        assert failed.value.status_code == 502, failed.value.response.text
        assert "bad answer" in failed.value.message and failed.value.body["type"] == "api_error"
        _serve_good(env, node, pool)
    line = _log_line(env.log, rid)
    assert line["status"] == 502 and line["backend"] == "raw"
    metrics = httpx.get(f"{env.gw}/metrics").text
    assert 'ollabridge_requests_total{backend="raw",method="POST",route="/v1/chat/completions",status="502"}' \
        in metrics
    assert "Traceback" not in env.log.read_text(errors="replace")


def test_a_bad_chunk_mid_stream_is_an_error_event_after_the_good_ones(env):
    with RawNode(env.gw, env.token) as node, ThreadPoolExecutor(1) as pool:
        wait_model(env.gw, "raw:latest")

        def sse() -> tuple[str, Exception | None]:
            text = ""
            try:
                for chunk in env.oai.chat.completions.create(model="raw", messages=MSG, stream=True):
                    text += chunk.choices[0].delta.content or "" if chunk.choices else ""
            except openai.APIError as exc:
                return text, exc
            return text, None

        asked = pool.submit(sse)
        rid = node.recv("req")["id"]
        for i in range(2):
            node.res(rid, {"message": {"role": "assistant", "content": f"tok{i} "}, "done": False})
        node.res(rid, {"message": {"role": "assistant", "content": {"not": "text"}}, "done": False})
        text, error = asked.result(30)
        assert text == "tok0 tok1 " and error is not None and "bad answer" in str(error)
        assert node.recv("cancel")["id"] == rid  # the node is told to stop that generation

        def ndjson() -> tuple[str, Exception | None]:
            text = ""
            try:
                for chunk in ollama.Client(host=f"{env.gw}/ollama").chat(model="raw", messages=MSG, stream=True):
                    text += chunk.message.content or ""
            except ollama.ResponseError as exc:
                return text, exc
            return text, None

        asked = pool.submit(ndjson)
        rid = node.recv("req")["id"]
        node.res(rid, {"message": {"role": "assistant", "content": "tok0 "}, "done": False})
        node.res(rid, {"message": {"role": "assistant", "content": ""}, "eval_count": [1]}, done=True)
        text, error = asked.result(30)
        assert text == "tok0 " and error is not None and "bad answer" in str(error)
        _serve_good(env, node, pool)


def test_bad_embeddings_are_a_502_not_a_500(env):
    with RawNode(env.gw, env.token) as node, ThreadPoolExecutor(1) as pool:
        wait_model(env.gw, "raw:latest")
        asked = pool.submit(env.oai.embeddings.create, model="raw", input=["ab"])
        node.res(node.recv("req")["id"], {"embeddings": [["x", 1]], "prompt_eval_count": 1}, done=True)
        with pytest.raises(openai.APIStatusError) as failed:
            asked.result(30)
        assert failed.value.status_code == 502 and "embeddings" in failed.value.message
        asked = pool.submit(ollama.Client(host=f"{env.gw}/ollama").embed, model="raw", input="ab")
        node.res(node.recv("req")["id"], {"embeddings": [[0.5, 1]], "prompt_eval_count": "one"}, done=True)
        with pytest.raises(ollama.ResponseError) as native:
            asked.result(30)
        assert native.value.status_code == 502
        asked = pool.submit(env.oai.embeddings.create, model="raw", input=["ab"])
        node.res(node.recv("req")["id"], {"embeddings": [[0.5, 1]], "prompt_eval_count": 1.0}, done=True)
        reply = asked.result(30)
        assert reply.data[0].embedding == [0.5, 1.0] and reply.usage.prompt_tokens == 1


def test_bad_fields_in_a_node_model_list_do_not_reach_routing_or_clients(env):
    """A model entry's `model` is hashed by routing and `details` read by the UI: wrong types are dropped."""
    with RawNode(env.gw, env.token, models=()) as node:
        node.send({"type": "models", "models": [{"name": "raw:latest", "model": ["x"], "details": "big",
                                                 "size": "huge", "modified_at": 7}]})
        wait_model(env.gw, "raw:latest")
        tags = {m["name"]: m for m in httpx.get(f"{env.gw}/ollama/api/tags").json()["models"]}
        assert tags["raw:latest"]["model"] == "raw:latest" and "details" not in tags["raw:latest"]
        assert {m.id for m in env.oai.models.list().data} >= {"raw:latest", "cpu:latest"}
        reply = env.oai.chat.completions.create(model="cpu", messages=MSG)  # routing looks at every entry
        assert reply.choices[0].message.content.startswith("tok0")
