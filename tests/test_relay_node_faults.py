"""A node cannot break the gateway, and its slots are honest: a raw WebSocket node (tests/relay_support.py
RawNode) that sends bad values, and that holds its slot after a cancel, behind a real gateway process,
asked by real clients (the openai SDK, the ollama client, httpx)."""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import ollama
import openai
import pytest

from tests.procs import free_port
from tests.relay_support import (RawNode, fake_ollama, fake_stats, gateway, node, pair, save_credential, wait_model,
                                 wait_until)

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
    # The CPU Ollama serves `shared` too: a request a stopped node's slot holds back must not go there.
    with fake_ollama(logs, "cpu:latest,shared:latest") as cpu, gateway(logs, tmp / "data", cpu, port=port,
                                                                      OLLABRIDGE_FIRST_TOKEN_TIMEOUT="2") as gw:
        yield SimpleNamespace(gw=gw, cpu=cpu, token=pair(gw, "raw")["node_token"], log=logs / f"gateway-{port}.log",
                              oai=openai.OpenAI(base_url=f"{gw}/v1", api_key="x", max_retries=0, timeout=30),
                              logs=logs, tmp=tmp)


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


# -- point 7: a stopped request's slot is busy until the node has let go ----------------------------
def _stream_then_stop(env, model: str, chunks: int, rid: str | None = None) -> None:
    """A client reads `chunks` chunks of a stream, then goes away (closes the connection)."""
    with httpx.stream("POST", f"{env.gw}/v1/chat/completions", timeout=30, headers={"X-Request-ID": rid or "-"},
                      json={"model": model, "messages": MSG, "stream": True, "max_tokens": 100000}) as r:
        lines = r.iter_lines()
        got = 0
        while got < chunks:
            got += next(lines).startswith("data: ")


def _stopped_on(node: RawNode, env, pool: ThreadPoolExecutor) -> str:
    """A client streams from the raw node (model `shared`, the CPU Ollama has it too) and stops after
    two chunks: the id of that request, whose `cancel` the node got at once."""
    wait_model(env.gw, "shared:latest")
    streaming = pool.submit(_stream_then_stop, env, "shared", 2)
    rid = node.recv("req")["id"]
    for i in range(3):
        node.res(rid, {"message": {"role": "assistant", "content": f"tok{i} "}, "done": False})
    streaming.result(30)
    assert node.recv("cancel", 2)["id"] == rid
    return rid


def test_a_stopped_stream_holds_the_node_slot_until_the_node_confirms(env):
    with RawNode(env.gw, env.token, models=("shared:latest",)) as node, ThreadPoolExecutor(2) as pool:
        cpu_chats = fake_stats(env.cpu)["chats"]
        rid = _stopped_on(node, env, pool)
        cancelled_at = time.monotonic()
        asked = pool.submit(env.oai.chat.completions.create, model="shared", messages=MSG)
        with pytest.raises(TimeoutError):  # the node has not let go: nothing new is sent to it
            node.recv("req", 0.5)
        node.res(rid, {"message": {"role": "assistant", "content": "late "}, "done": False})  # still ignored
        node.send({"type": "res", "id": rid, "done": True, "error": {"status": 499, "message": "cancelled"}})
        nxt = node.recv("req", 5)
        assert time.monotonic() - cancelled_at < 1.5  # right after the confirmation, not after the bound
        node.res(nxt["id"], GOOD_FINAL, done=True)
        assert asked.result(30).choices[0].message.content == "fine"  # the node's answer
    assert fake_stats(env.cpu)["chats"] == cpu_chats  # no silent fallback to the CPU Ollama


def test_a_node_that_never_confirms_gets_its_slot_back_after_a_short_bound(env):
    with RawNode(env.gw, env.token, models=("shared:latest",)) as node, ThreadPoolExecutor(2) as pool:
        cpu_chats = fake_stats(env.cpu)["chats"]
        _stopped_on(node, env, pool)
        cancelled_at = time.monotonic()
        asked = pool.submit(env.oai.chat.completions.create, model="shared", messages=MSG)
        nxt = node.recv("req", 5)  # it never confirms
        waited = time.monotonic() - cancelled_at
        assert 1.5 < waited < 4, waited  # the bound is 2 s
        node.res(nxt["id"], GOOD_FINAL, done=True)
        assert asked.result(30).choices[0].message.content == "fine"
    assert fake_stats(env.cpu)["chats"] == cpu_chats


def test_a_first_token_timeout_cancels_the_request_on_the_node(env):
    with RawNode(env.gw, env.token) as node, ThreadPoolExecutor(1) as pool:
        wait_model(env.gw, "raw:latest")
        asked = pool.submit(httpx.post, f"{env.gw}/ollama/api/chat", timeout=30,
                            json={"model": "raw", "messages": MSG, "stream": False})
        rid = node.recv("req")["id"]  # and says nothing (OLLABRIDGE_FIRST_TOKEN_TIMEOUT=2)
        assert asked.result(30).status_code == 504
        assert node.recv("cancel", 2)["id"] == rid


def _queued(gw: str) -> int:
    line = next(x for x in httpx.get(f"{gw}/metrics").text.splitlines() if x.startswith("ollabridge_queue_waiting "))
    return int(float(line.split()[1]))


def test_a_one_slot_agent_serves_the_next_request_right_after_a_stop(env):
    """The real agent confirms each cancel once its Ollama request is closed: the request waiting for its
    one slot gets it then, with no "node busy" 503, and the next one after a stop does not fall back to the
    CPU Ollama nor wait for the bound."""
    with fake_ollama(env.logs, "shared:latest,solo:latest", "--delay", "0.01", "--max-chunks", "100000") as gpu:
        creds = env.tmp / "one-slot.json"
        save_credential(creds, env.gw, pair(env.gw, "one-slot"))
        with node(env.logs, env.gw, gpu, creds, "one-slot", slots=1) as agent, ThreadPoolExecutor(1) as pool:
            cpu_chats = fake_stats(env.cpu)["chats"]
            for i in range(5):
                with httpx.stream("POST", f"{env.gw}/v1/chat/completions", timeout=30,
                                  json={"model": "solo", "messages": MSG, "stream": True, "max_tokens": 100000}) as r:
                    lines = r.iter_lines()  # kept: a dropped line iterator closes the stream
                    assert next(lines).startswith("data: ")
                    waiting = pool.submit(env.oai.chat.completions.create, model="solo", messages=MSG, max_tokens=3)
                    wait_until(lambda: _queued(env.gw) == 1, 10, "the next request queued for the slot")
                reply = waiting.result(30)  # the stream above stopped: its slot is the waiting request's
                assert reply.choices[0].message.content == "tok0 tok1 tok2 "
                _stream_then_stop(env, "shared", 3, f"stopped-{i}")
                _log_line(env.log, f"stopped-{i}")  # the gateway has seen the stop (a new request could beat it)
                started = time.monotonic()
                reply = env.oai.chat.completions.create(model="shared", messages=MSG, max_tokens=3)
                assert reply.choices[0].message.content == "tok0 tok1 tok2 "
                assert time.monotonic() - started < 1.5  # the agent confirmed; the bound is 2 s
            assert fake_stats(env.cpu)["chats"] == cpu_chats
            assert fake_stats(gpu)["cancelled"] == 10 and "node busy" not in agent.text()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/ollama/api/chat"])
def test_a_client_that_gives_up_on_a_whole_answer_cancels_it_on_the_node(env, path):
    """Non-streamed answers too: a client that disconnects (here its read timeout) stops the node at once."""
    rid_header = f"gave-up-{path.count('/')}"
    with RawNode(env.gw, env.token) as node, ThreadPoolExecutor(1) as pool:
        wait_model(env.gw, "raw:latest")
        asked = pool.submit(httpx.post, f"{env.gw}{path}", timeout=1, headers={"X-Request-ID": rid_header},
                            json={"model": "raw", "messages": MSG, "stream": False})
        rid = node.recv("req")["id"]  # and the node thinks for a long time
        with pytest.raises(httpx.ReadTimeout):
            asked.result(30)
        assert node.recv("cancel", 0.5)["id"] == rid  # at once, not at the first-token timeout (2 s)
        node.send({"type": "res", "id": rid, "done": True, "error": {"status": 499, "message": "cancelled"}})
        _serve_good(env, node, pool)
    assert _log_line(env.log, rid_header)["status"] == 499
