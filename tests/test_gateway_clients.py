"""Real clients nobody here wrote, against `python app.py` in front of the real in-box engine (and,
where the base model's answer is left to chance, in front of a scripted Ollama: tests/fake_ollama.py)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time

import httpx
import ollama
import openai
import pytest

from tests.procs import ROOT
from tests.relay_support import fake_ollama, gateway

MODEL = "gemma3:270m"
HELLO = [{"role": "user", "content": "Hello!"}]


@pytest.fixture(scope="module")
def client(gateway_url):
    return openai.OpenAI(base_url=f"{gateway_url}/ollama/v1", api_key="not-needed")


def test_seed_curl_lines(gateway_url):
    health = httpx.get(f"{gateway_url}/health").json()
    assert health["status"] == "ok"
    assert MODEL in health["backends"][0]["models"]
    assert set(health["relay"]) >= {"nodes_connected", "requests_in_flight", "requests_total",
                                    "requests_failed", "tokens_relayed"}
    models = httpx.get(f"{gateway_url}/ollama/v1/models").json()
    assert models["object"] == "list" and MODEL in [m["id"] for m in models["data"]]
    card = next(m for m in models["data"] if m["id"] == MODEL)
    assert "not instruction-tuned" in card["notice"]  # the base model says so where it is listed

    body = {"model": MODEL, "messages": HELLO, "stream": True, "max_tokens": 12}
    with httpx.stream("POST", f"{gateway_url}/ollama/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks).strip()
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] in ("stop", "length")
    assert last["usage"]["completion_tokens"] > 0


def test_openai_sdk_chat_and_stream(client):
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=10)
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens > 0 and reply.choices[0].finish_reason in ("stop", "length")

    pieces, finish, usage = [], None, None
    for chunk in client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=10, stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage and not chunk.choices:
            usage = chunk.usage
    assert "".join(pieces) and finish in ("stop", "length")
    assert usage is not None and usage.total_tokens > 0


def test_openai_sdk_seed_and_max_tokens_are_honoured(client):
    ask = dict(model=MODEL, messages=[{"role": "user", "content": "Count: one, two,"}], max_tokens=6,
               temperature=0, seed=42)
    first, second = (client.chat.completions.create(**ask) for _ in range(2))
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.usage.completion_tokens <= 6 and first.choices[0].finish_reason == "length"


def test_openai_sdk_async_stream(gateway_url):
    async def run():
        async with openai.AsyncOpenAI(base_url=f"{gateway_url}/ollama/v1", api_key="x") as aclient:
            stream = await aclient.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, stream=True)
            return [c.choices[0].delta.content or "" async for c in stream if c.choices]

    assert "".join(asyncio.run(run()))


def test_openai_sdk_json_response_format(client):
    # The base model rambles; one worked example keeps its object short enough to finish.
    messages = [{"role": "user", "content": "Give me a tiny JSON object."},
                {"role": "assistant", "content": '{"a": 1}'},
                {"role": "user", "content": "Another tiny JSON object."}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, response_format={"type": "json_object"},
                                           max_tokens=40, temperature=0)
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_openai_sdk_json_schema(client):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"]}
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name a city."}], max_tokens=40, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}})
    assert "city" in json.loads(reply.choices[0].message.content)


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string"}}, "required": ["city"]}}}]
ROME = [{"role": "user", "content": "Weather in Rome?"}]


@pytest.fixture(scope="module")
def scripted(out_dir, tmp_path_factory):
    """An OpenAI client of a gateway in front of a scripted Ollama, which always calls the first tool
    with {"city": "x"} (the base model calls one only by chance)."""
    with fake_ollama(out_dir, "fake:latest") as up, gateway(out_dir, tmp_path_factory.mktemp("tools"), up) as gw:
        yield openai.OpenAI(base_url=f"{gw}/ollama/v1", api_key="x", max_retries=0)


def test_openai_sdk_tool_calls_whole_and_streamed(scripted):
    reply = scripted.chat.completions.create(model="fake", messages=ROME, tools=TOOLS)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "x"}  # a JSON string, as OpenAI sends it

    deltas, finish = [], None
    for chunk in scripted.chat.completions.create(model="fake", messages=ROME, tools=TOOLS, stream=True):
        if chunk.choices:
            deltas += chunk.choices[0].delta.tool_calls or []
            finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and [d.index for d in deltas] == [0]
    assert deltas[0].id.startswith("call_") and deltas[0].type == "function"
    assert deltas[0].function.name == "get_weather" and json.loads(deltas[0].function.arguments) == {"city": "x"}

    # The tool's result goes back as OpenAI sends it; the model answers in text.
    after = scripted.chat.completions.create(model="fake", tools=TOOLS, messages=[
        *ROME, choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'}])
    assert after.choices[0].finish_reason == "stop" and after.choices[0].message.content.startswith("tok0")
    assert not after.choices[0].message.tool_calls


def test_openai_sdk_embeddings(client):
    one = client.embeddings.create(model=MODEL, input="hello")  # the SDK asks for base64 and decodes it
    many = client.embeddings.create(model=MODEL, input=["hello", "world"], encoding_format="float")
    assert len(one.data) == 1 and len(many.data) == 2
    assert len(one.data[0].embedding) == len(many.data[1].embedding) > 100
    assert one.data[0].embedding[:4] == pytest.approx(many.data[0].embedding[:4], abs=1e-4)


def test_openai_sdk_errors_are_typed(client):
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert missing.value.body["code"] == "model_not_found" and MODEL in missing.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=HELLO, temperature=5)


def test_root_v1_serves_the_same_api(gateway_url):
    sdk = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="x")
    assert MODEL in [m.id for m in sdk.models.list()]


def test_langchain_chat_openai(gateway_url):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{gateway_url}/ollama/v1", api_key="not-needed", model=MODEL, max_tokens=8)
    assert llm.invoke("Hello!").content


def test_ollama_client_at_ollama_prefix(gateway_url):
    client = ollama.Client(host=f"{gateway_url}/ollama")
    reply = client.chat(model=MODEL, messages=HELLO, options={"num_predict": 8})
    assert reply.message.content and reply.done and reply.eval_count > 0
    parts = list(client.chat(model=MODEL, messages=HELLO, stream=True, options={"num_predict": 8}))
    assert parts[-1].done and "".join(p.message.content for p in parts)
    assert MODEL in [m.model for m in client.list().models]
    assert client.show(MODEL).details is not None
    assert len(client.embed(model=MODEL, input=["a", "b"]).embeddings) == 2
    assert client.embeddings(model=MODEL, prompt="a").embedding
    loaded = client.ps().models  # the in-box engine keeps its one model loaded
    assert [m.model for m in loaded] == [MODEL] and loaded[0].size > 0 and loaded[0].context_length > 0
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="missing:1b", messages=HELLO)
    assert err.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as refused:
        client.pull("qwen2.5:1.5b")
    assert refused.value.status_code == 403


def test_node_fetch_runs_the_seed_javascript_example(gateway_url):
    proc = subprocess.run(["node", str(ROOT / "tests/js/seed_example.mjs")], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "OLLABRIDGE_URL": gateway_url, "OLLABRIDGE_MODEL": MODEL})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report["status"] == 200
    assert proc.stdout.strip() == report["data"]["choices"][0]["message"]["content"].strip()


def test_cors_preflight_from_a_browser_app(gateway_url):
    r = httpx.options(f"{gateway_url}/ollama/v1/chat/completions", headers={
        "Origin": "https://avatar.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,authorization"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    actual = httpx.get(f"{gateway_url}/ollama/v1/models", headers={"Origin": "https://avatar.example"})
    assert actual.headers["access-control-allow-origin"] == "*"


def test_client_disconnect_stops_generation(gateway_url):
    """A client that goes away frees the (single-slot) engine at once for the next one."""
    body = {"model": MODEL, "messages": HELLO, "stream": True, "max_tokens": 4000, "temperature": 1}
    with httpx.stream("POST", f"{gateway_url}/ollama/v1/chat/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    started = time.monotonic()
    reply = httpx.post(f"{gateway_url}/ollama/v1/chat/completions", timeout=60,
                       json={"model": MODEL, "messages": HELLO, "max_tokens": 4})
    assert reply.status_code == 200
    # 4,000 tokens at ~30 tok/s would hold the engine for minutes; freed, this answers in seconds.
    assert time.monotonic() - started < 20


def test_bad_requests_get_clear_errors(gateway_url):
    bad_json = httpx.post(f"{gateway_url}/ollama/v1/chat/completions", content=b"{nope",
                          headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and "JSON" in bad_json.json()["error"]["message"]
    native = httpx.post(f"{gateway_url}/ollama/api/chat", content=b'{"messages": []}')
    assert native.status_code == 400 and "model" in native.json()["error"]
    big = httpx.post(f"{gateway_url}/ollama/v1/chat/completions", content=b"x" * (16 * 1024 * 1024 + 1))
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    native_missing = httpx.post(f"{gateway_url}/ollama/api/chat", json={"model": "nope", "messages": HELLO})
    assert native_missing.status_code == 404 and "nope" in native_missing.json()["error"]
