"""The `anthropic` SDK as the judge of `/v1/messages` (and `/ollama/v1/messages`): whole and streamed
answers, tools both ways, an image, thinking, count_tokens, typed errors, API keys as `x-api-key`,
in front of a scripted Ollama (tests/fake_ollama.py), the real in-box engine, and a paired node."""

from __future__ import annotations

import asyncio
import base64
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import anthropic
import httpx
import pytest

from tests.relay_support import control, fake_ollama, gateway, node, pair, save_credential

TOKENS = "tok0 tok1 tok2 tok3 tok4 "
HI = [{"role": "user", "content": "say hi"}]
WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
# A 1x1 PNG, as a user would attach a screenshot.
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8ff"
    "ff3f0005fe02fea7d605a20000000049454e44ae426082")).decode()


@pytest.fixture(scope="module")
def scripted(out_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    logs = out_dir / "clients-anthropic"
    logs.mkdir(exist_ok=True)
    with fake_ollama(logs, "fake:latest,deep-think:latest") as up, \
            gateway(logs, tmp_path_factory.mktemp("anthropic"), up,
                    OLLABRIDGE_MODEL_ALIASES="claude-*=fake:latest") as gw:
        yield SimpleNamespace(up=up, gw=gw, sdk=anthropic.Anthropic(base_url=f"{gw}/ollama", api_key="x",
                                                                    max_retries=0, timeout=30))


def last_chat(up: str) -> dict:
    return httpx.get(f"{up}/_last").json()["chat"]


def test_create_and_stream_text(scripted):
    reply = scripted.sdk.messages.create(model="fake", max_tokens=5, messages=HI, system="Be brief.")
    assert reply.type == "message" and reply.role == "assistant" and reply.id.startswith("msg_")
    assert [(b.type, b.text) for b in reply.content] == [("text", TOKENS)]
    assert reply.stop_reason == "end_turn" and reply.model == "fake"
    assert reply.usage.input_tokens == 3 and reply.usage.output_tokens == 5
    sent = last_chat(scripted.up)
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "say hi"}]
    assert sent["options"] == {"num_predict": 5}

    # The SDK's stream helper needs every event in order, both usages and `event:` lines. (This SDK
    # no longer offers `temperature`; older ones and other clients still send it.)
    with scripted.sdk.messages.stream(model="fake", max_tokens=5, messages=HI, stop_sequences=["END"],
                                      extra_body={"temperature": 0.2}) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == TOKENS and len(pieces) == 5
    assert final.content[0].text == TOKENS and final.stop_reason == "end_turn" and final.usage.output_tokens == 5
    assert last_chat(scripted.up)["options"] == {"num_predict": 5, "temperature": 0.2, "stop": ["END"]}

    # The raw events, as Anthropic's API orders them.
    kinds = [e.type for e in scripted.sdk.messages.create(model="fake", max_tokens=2, messages=HI, stream=True)]
    assert kinds == ["message_start", "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_stop", "message_delta", "message_stop"]


def test_gateway_root_alias_and_async(scripted):
    sdk = anthropic.Anthropic(base_url=scripted.gw, api_key="x", max_retries=0)  # POST /v1/messages
    reply = sdk.messages.create(model="claude-sonnet-4-5", max_tokens=3, messages=HI)
    assert reply.model == "fake:latest"  # the alias answers with the name of the model that served
    assert reply.content[0].text == "tok0 tok1 tok2 " and last_chat(scripted.up)["model"] == "fake:latest"

    async def run() -> str:
        async with anthropic.AsyncAnthropic(base_url=f"{scripted.gw}/ollama", api_key="x") as client:
            async with client.messages.stream(model="claude-3-5-haiku-latest", max_tokens=4, messages=HI) as s:
                return "".join([t async for t in s.text_stream])

    assert asyncio.run(run()) == "tok0 tok1 tok2 tok3 "


def test_tool_round_trip_whole_and_streamed(scripted):
    control(scripted.up, call_tools=True, tool_args=None, tool=None)
    ask = [{"role": "user", "content": "Weather in Rome?"}]
    reply = scripted.sdk.messages.create(model="fake", max_tokens=64, messages=ask, tools=[WEATHER])
    assert reply.stop_reason == "tool_use"
    [use] = [b for b in reply.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": "x"} and use.id.startswith("toolu_")
    assert last_chat(scripted.up)["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": WEATHER["input_schema"], "description": "Weather in a city"}}]

    with scripted.sdk.messages.stream(model="fake", max_tokens=64, messages=ask, tools=[WEATHER]) as stream:
        streamed = stream.get_final_message()
    [suse] = [b for b in streamed.content if b.type == "tool_use"]
    assert streamed.stop_reason == "tool_use" and suse.name == "get_weather" and suse.input == {"city": "x"}

    # The result goes back as the SDK sends it; the model answers in text.
    after = scripted.sdk.messages.create(model="fake", max_tokens=5, tools=[WEATHER], messages=[
        *ask, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in reply.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "21 C, sunny"}]}])
    assert after.stop_reason == "end_turn" and after.content[0].text == TOKENS
    *_, call, result = last_chat(scripted.up)["messages"]
    assert call["tool_calls"] == [{"id": use.id, "function": {"name": "get_weather", "arguments": {"city": "x"}}}]
    assert result == {"role": "tool", "content": "21 C, sunny", "tool_call_id": use.id, "tool_name": "get_weather"}


def test_an_image_reaches_ollama_and_urls_are_refused(scripted):
    reply = scripted.sdk.messages.create(model="fake", max_tokens=5, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "text", "text": "What is in this picture?"}]}])
    assert reply.content[0].text == TOKENS
    [message] = last_chat(scripted.up)["messages"]
    assert message == {"role": "user", "content": "What is in this picture?", "images": [PNG]}

    with pytest.raises(anthropic.BadRequestError) as refused:
        scripted.sdk.messages.create(model="fake", max_tokens=5, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
            {"type": "text", "text": "And this one?"}]}])
    assert refused.value.body["error"]["type"] == "invalid_request_error"
    assert "base64" in refused.value.body["error"]["message"]


def test_thinking(scripted):
    with scripted.sdk.messages.stream(model="deep-think", max_tokens=3, messages=HI,
                                      thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "hmm " and final.content[1].text == "tok0 tok1 tok2 "
    assert last_chat(scripted.up)["think"] is True
    # A model that cannot think still answers (Ollama would say 400 "does not support thinking").
    plain = scripted.sdk.messages.create(model="fake", max_tokens=3, messages=HI,
                                         thinking={"type": "enabled", "budget_tokens": 1024})
    assert [b.type for b in plain.content] == ["text"] and "think" not in last_chat(scripted.up)


def test_count_tokens_and_typed_errors(scripted):
    counted = scripted.sdk.messages.count_tokens(model="fake", messages=HI, system="Be brief.", tools=[WEATHER])
    assert isinstance(counted.input_tokens, int) and counted.input_tokens > 10
    assert scripted.sdk.messages.count_tokens(model="fake", messages=HI).input_tokens < counted.input_tokens

    with pytest.raises(anthropic.NotFoundError) as missing:
        scripted.sdk.messages.create(model="no-such-model", max_tokens=5, messages=HI)
    assert missing.value.body["type"] == "error" and missing.value.body["error"]["type"] == "not_found_error"
    assert "fake:latest" in missing.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError):
        scripted.sdk.messages.create(model="fake", max_tokens=5, messages=[])


def test_api_keys_as_x_api_key(out_dir, tmp_path):
    with fake_ollama(out_dir, "fake:latest") as up, gateway(out_dir, tmp_path, up, OLLABRIDGE_API_KEYS="sk-good") as gw:
        good = anthropic.Anthropic(base_url=gw, api_key="sk-good", max_retries=0)  # sent as x-api-key
        assert good.messages.create(model="fake", max_tokens=2, messages=HI).content[0].text == "tok0 tok1 "
        bearer = anthropic.Anthropic(base_url=f"{gw}/ollama", auth_token="sk-good", max_retries=0)
        assert bearer.messages.create(model="fake", max_tokens=1, messages=HI).content[0].text == "tok0 "
        with pytest.raises(anthropic.AuthenticationError) as refused:
            anthropic.Anthropic(base_url=gw, api_key="sk-wrong", max_retries=0).messages.create(
                model="fake", max_tokens=2, messages=HI)
        assert refused.value.body["error"]["type"] == "authentication_error"


def test_a_backend_dying_mid_stream_is_an_error_not_a_short_answer(out_dir, tmp_path):
    with fake_ollama(out_dir, "fake:latest", "--chunks", "10", "--die-after", "3") as up, \
            gateway(out_dir, tmp_path, up) as gw:
        sdk = anthropic.Anthropic(base_url=gw, api_key="x", max_retries=0)
        pieces = []
        with pytest.raises(anthropic.APIStatusError) as failed:
            with sdk.messages.stream(model="fake", max_tokens=10, messages=HI) as stream:
                pieces.extend(stream.text_stream)
        assert "".join(pieces) == "tok0 tok1 tok2 "  # what came before the error event
        assert failed.value.body["type"] == "error" and "mid-stream" in failed.value.body["error"]["message"]


def test_in_box_engine_streams_real_tokens(gateway_url):
    sdk = anthropic.Anthropic(base_url=f"{gateway_url}/ollama", api_key="x", max_retries=0, timeout=120)
    with sdk.messages.stream(model="gemma3:270m", max_tokens=8, messages=[{"role": "user", "content": "Hello!"}],
                             system="You are a friendly assistant.") as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.strip() and final.content[0].text == text
    assert final.model == "gemma3:270m" and final.stop_reason in ("end_turn", "max_tokens")
    assert 0 < final.usage.output_tokens <= 8 and final.usage.input_tokens > 0


def test_through_a_node(out_dir: Path, tmp_path: Path):
    with ExitStack() as stack:
        cpu = stack.enter_context(fake_ollama(out_dir, "cpu-only:latest"))
        gpu = stack.enter_context(fake_ollama(out_dir, "gpu-m:latest,gpu-think:latest"))
        gw = stack.enter_context(gateway(out_dir, tmp_path / "data", cpu))
        save_credential(tmp_path / "creds.json", gw, pair(gw, "anthropic-node"))
        stack.enter_context(node(out_dir, gw, gpu, tmp_path / "creds.json", "anthropic-node"))
        sdk = anthropic.Anthropic(base_url=f"{gw}/ollama", api_key="x", max_retries=0, timeout=30)
        with sdk.messages.stream(model="gpu-think", max_tokens=4, messages=HI, tools=[WEATHER],
                                 thinking={"type": "enabled", "budget_tokens": 100}) as stream:
            final = stream.get_final_message()
        assert [b.type for b in final.content] == ["thinking", "tool_use"] and final.stop_reason == "tool_use"
        assert final.content[1].input == {"city": "x"}
        reply = sdk.messages.create(model="gpu-m", max_tokens=3, messages=HI)
        assert reply.content[0].text == "tok0 tok1 tok2 " and reply.model == "gpu-m"
        assert httpx.get(f"{gpu}/_last").json()["chat"]["model"] == "gpu-m"
        assert httpx.get(f"{cpu}/_last").json() == {}  # the node served both
