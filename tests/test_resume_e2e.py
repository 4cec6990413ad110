"""Streams that survive a dying backend, end to end: real gateway processes, scripted Ollamas
(tests/fake_ollama.py, which continue "tokK" numbering from a trailing assistant message) that cut
their streams, die or freeze, node agents killed or frozen (SIGSTOP), and the openai, anthropic and
ollama clients reading the resumed streams. Each must see exactly what a stream that never failed
gives: the whole text once, no error event, one final chunk, the summed usage, one id."""

from __future__ import annotations

import json
import signal
import time
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.relay_support import control, fake_ollama, fake_stats, gateway, node, pair, relay_nodes, save_credential
from tests.relay_support import wait_until

EIGHT = "".join(f"tok{i} " for i in range(8))
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def two(out_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A gateway whose own Ollama (`first`, served first) cuts every stream after a few chunks, and
    an extra upstream (`second`) with the same models that does not."""
    logs = out_dir / "resume"
    logs.mkdir(exist_ok=True)
    models = "m:latest,think-m:latest"
    with fake_ollama(logs, models, "--chunks", "8", "--delay", "0.01") as first, \
            fake_ollama(logs, models, "--chunks", "8", "--delay", "0.01") as second, \
            gateway(logs, tmp_path_factory.mktemp("gw"), first, OLLABRIDGE_UPSTREAMS=second) as gw:
        yield SimpleNamespace(gw=gw, first=first, second=second, logs=logs, tmp=tmp_path_factory)


@pytest.fixture
def cut(two):
    control(two.first, cut_after=3)
    yield two
    control(two.first, cut_after=0)


def continued(url: str, marker: str, op: str = "chat") -> dict:
    """The continuation `url` got for the request whose first message is `marker`."""
    body = httpx.get(f"{url}/_last").json().get(op) or {}
    messages = body.get("messages") or []
    assert messages and messages[0]["content"] == marker, f"no continuation of {marker!r} reached {url}: {body}"
    return body


def sdk(gw: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw}/ollama/v1", api_key="x", max_retries=0, timeout=30)


def test_openai_chat_stream_resumed(cut):
    chunks = list(sdk(cut.gw).chat.completions.create(model="m", messages=ask("chat-sse"), stream=True,
                                                      stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == EIGHT
    assert {c.id for c in chunks} == {chunks[0].id}
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["stop"]
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 8)
    assert continued(cut.second, "chat-sse")["messages"][-1] == {"role": "assistant", "content": "tok0 tok1 tok2 "}


def test_openai_whole_answer_resumed(cut):
    reply = sdk(cut.gw).chat.completions.create(model="m", messages=ask("chat-whole"))
    assert reply.choices[0].message.content == EIGHT and reply.usage.completion_tokens == 8
    continued(cut.second, "chat-whole")


def test_responses_stream_resumed(cut):
    events = list(sdk(cut.gw).responses.create(model="m", input="responses", stream=True))
    kinds = [e.type for e in events]
    assert "response.failed" not in kinds and kinds.count("response.completed") == 1
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == EIGHT
    created, completed = events[0].response, events[-1].response
    assert created.id == completed.id and completed.output_text == EIGHT
    assert (completed.usage.input_tokens, completed.usage.output_tokens) == (3, 8)
    continued(cut.second, "responses")


def test_anthropic_stream_resumed_within_max_tokens(cut):
    client = anthropic.Anthropic(base_url=f"{cut.gw}/ollama", api_key="x", max_retries=0, timeout=30)
    with client.messages.stream(model="m", max_tokens=6, messages=ask("anthropic")) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "error" not in kinds and kinds.count("message_start") == kinds.count("message_stop") == 1
    assert final.content[0].text == "".join(f"tok{i} " for i in range(6))  # max_tokens holds across backends
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 6
    assert continued(cut.second, "anthropic")["options"]["num_predict"] == 3  # 6, less the 3 streamed


def test_ollama_chat_with_thinking_resumed(cut):
    parts = list(ollama.Client(host=f"{cut.gw}/ollama").chat(model="think-m", messages=ask("think"), think=True,
                                                             stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == "hmm "  # thinking once, not again
    assert "".join(p.message.content or "" for p in parts) == EIGHT
    # 3 chunks from the first (thinking counts, as Ollama counts thinking tokens) + 6 from the second
    assert [p.done for p in parts].count(True) == 1 and parts[-1].eval_count == 9
    last = continued(cut.second, "think")["messages"][-1]
    assert last == {"role": "assistant", "content": "tok0 tok1 ", "thinking": "hmm "}


def test_ollama_generate_resumed_as_chat(cut):
    parts = list(ollama.Client(host=f"{cut.gw}/ollama").generate(model="m", prompt="generate", stream=True))
    assert "".join(p.response for p in parts) == EIGHT
    assert [p.done for p in parts].count(True) == 1 and parts[-1].eval_count == 8
    assert continued(cut.second, "generate")["messages"] == [
        {"role": "user", "content": "generate"}, {"role": "assistant", "content": "tok0 tok1 tok2 "}]


def test_completions_stream_resumed(cut):
    chunks = list(sdk(cut.gw).completions.create(model="m", prompt="completions", stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == EIGHT
    assert {c.id for c in chunks} == {chunks[0].id}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    continued(cut.second, "completions")


def test_a_tool_call_already_sent_is_not_sent_again(two):
    control(two.first, cut_after=1)  # right after the tool call's chunk
    try:
        chunks = list(sdk(two.gw).chat.completions.create(model="m", messages=ask("tools"), tools=TOOLS,
                                                          stream=True))
    finally:
        control(two.first, cut_after=0)
    calls = [call for c in chunks if c.choices for call in (c.choices[0].delta.tool_calls or [])]
    assert [(c.index, c.function.name, json.loads(c.function.arguments)) for c in calls] == [(0, "weather", {"city": "x"})]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert continued(two.second, "tools")["messages"][-1]["tool_calls"][0]["function"]["name"] == "weather"


def test_resume_off_ends_with_the_error_event_as_before(two, tmp_path):
    control(two.first, cut_after=3)
    try:
        with gateway(two.logs, tmp_path, two.first, OLLABRIDGE_UPSTREAMS=two.second, OLLABRIDGE_RESUME="0") as gw:
            with pytest.raises(openai.APIError):
                list(sdk(gw).chat.completions.create(model="m", messages=ask("off"), stream=True))
            assert 'ollabridge_stream_resumes_total{result="failed"} 1.0' in httpx.get(f"{gw}/metrics").text
    finally:
        control(two.first, cut_after=0)


def test_an_upstream_silent_past_the_idle_timeout_is_resumed(two, tmp_path):
    """An HTTP Ollama cannot be pinged: the idle timeout (here 1 s) notices it, then it resumes."""
    control(two.first, freeze_after=3)
    try:
        with gateway(two.logs, tmp_path, two.first, OLLABRIDGE_UPSTREAMS=two.second, OLLABRIDGE_IDLE_TIMEOUT="1") as gw:
            parts = list(ollama.Client(host=f"{gw}/ollama").chat(model="m", messages=ask("idle"), stream=True))
    finally:
        control(two.first, freeze_after=0)
    assert "".join(p.message.content for p in parts) == EIGHT and parts[-1].eval_count == 8
    assert continued(two.second, "idle")["messages"][-1] == {"role": "assistant", "content": "tok0 tok1 tok2 "}


def test_counts_in_metrics_and_health(cut):
    before = httpx.get(f"{cut.gw}/health").json()["streams"]["resumed"]
    list(sdk(cut.gw).chat.completions.create(model="m", messages=ask("counted"), stream=True))
    assert httpx.get(f"{cut.gw}/health").json()["streams"]["resumed"] == before + 1
    assert f'ollabridge_stream_resumes_total{{result="resumed"}} {before + 1}.0' in httpx.get(f"{cut.gw}/metrics").text


# -- through relay nodes -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def relay(out_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A gateway whose own Ollama and a GPU node's Ollama both serve `r` (40 chunks, 50 ms apart);
    heartbeats every 30 s, so only the stream's own pace can notice a frozen node in time."""
    logs = out_dir / "resume-relay"
    logs.mkdir(exist_ok=True)
    tmp = tmp_path_factory.mktemp("resume-relay")
    with ExitStack() as stack:
        script = ("--chunks", "40", "--delay", "0.05")
        cpu = stack.enter_context(fake_ollama(logs, "r:latest", *script))
        gpu = stack.enter_context(fake_ollama(logs, "r:latest", *script))
        gw = stack.enter_context(gateway(logs, tmp / "data", cpu, OLLABRIDGE_RELAY_HEARTBEAT="30"))
        creds = tmp / "node.json"
        save_credential(creds, gw, pair(gw, "gpu"))
        yield SimpleNamespace(gw=gw, cpu=cpu, gpu=gpu, logs=logs, creds=creds)


FORTY = "".join(f"tok{i} " for i in range(40))


def _timed(parts, last: float) -> tuple[list, float]:
    """Every item of `parts` and the longest wait before one of them (the first: since `last`)."""
    items, gap = [], 0.0
    for item in parts:
        now = time.monotonic()
        gap, last = max(gap, now - last), now
        items.append(item)
    return items, gap


def test_node_killed_mid_answer_ndjson_resumed(relay):
    with node(relay.logs, relay.gw, relay.gpu, relay.creds, "gpu") as agent:
        stream = ollama.Client(host=f"{relay.gw}/ollama").chat(model="r", messages=ask("killed"), stream=True)
        head = [next(stream) for _ in range(5)]
        seen = time.monotonic()
        agent.kill()
        rest, gap = _timed(stream, seen)
    parts = head + rest
    assert "".join(p.message.content for p in parts) == FORTY
    assert [p.done for p in parts].count(True) == 1 and parts[-1].eval_count == 40
    print(f"\nnode killed: the client waited {gap:.3f}s between the lost node's last token and the next")
    assert gap < 2.0, gap  # a closed socket is noticed at once (bench/resume.py measures it)
    assert continued(relay.cpu, "killed")["messages"][-1]["role"] == "assistant"


def test_node_frozen_mid_answer_is_noticed_from_its_pace_and_resumed(relay):
    with node(relay.logs, relay.gw, relay.gpu, relay.creds, "gpu") as agent:
        try:
            stream = sdk(relay.gw).chat.completions.create(model="r", messages=ask("frozen"), stream=True)
            head = [next(stream) for _ in range(5)]
            seen = time.monotonic()
            agent.kill(signal.SIGSTOP)  # a frozen VM: the socket stays open, nothing comes
            rest, gap = _timed(stream, seen)
        finally:
            agent.kill(signal.SIGKILL)
    chunks = head + rest
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == FORTY
    assert {c.id for c in chunks} == {chunks[0].id}
    print(f"\nnode frozen: the client waited {gap:.3f}s between the lost node's last token and the next")
    assert gap < 3.0, gap  # 1 s of silence, a 1 s ping; heartbeats would take 90 s
    continued(relay.cpu, "frozen")
    health = httpx.get(f"{relay.gw}/health").json()["streams"]
    assert health["stalls_lost"] >= 1
    assert 'ollabridge_stall_probes_total{result="lost"}' in httpx.get(f"{relay.gw}/metrics").text
    wait_until(lambda: "gpu" not in [n["name"] for n in relay_nodes(relay.gw)], 10, "frozen node dropped")


def test_node_reporting_its_ollamas_failure_mid_answer_is_resumed(relay):
    control(relay.gpu, cut_after=5)
    try:
        with node(relay.logs, relay.gw, relay.gpu, relay.creds, "gpu"):
            client = anthropic.Anthropic(base_url=f"{relay.gw}/ollama", api_key="x", max_retries=0, timeout=30)
            with client.messages.stream(model="r", max_tokens=20, messages=ask("node-error")) as stream:
                kinds = [event.type for event in stream]
                final = stream.get_final_message()
            assert fake_stats(relay.gpu)["chats"] >= 1
            # The node stays: only its Ollama's stream failed.
            assert "gpu" in [n["name"] for n in relay_nodes(relay.gw)]
    finally:
        control(relay.gpu, cut_after=0)
    assert "error" not in kinds and kinds.count("message_stop") == 1
    assert final.content[0].text == "".join(f"tok{i} " for i in range(20)) and final.usage.output_tokens == 20
    assert continued(relay.cpu, "node-error")["options"]["num_predict"] == 15
