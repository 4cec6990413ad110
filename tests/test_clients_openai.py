"""The `openai` SDK as the judge of `/v1/responses` (stateless, as Ollama serves it) and the legacy
`/v1/completions`: whole and streamed, a function tool round trip, reasoning, an image, `suffix`,
in front of a scripted Ollama (tests/fake_ollama.py), the real in-box engine, and a paired node."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest

from tests.relay_support import control, fake_ollama, gateway, node, pair, save_credential

TOKENS = "tok0 tok1 tok2 tok3 tok4 "
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
PNG_URL = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/5+hHgAH"
           "ggJ/PchI7wAAAABJRU5ErkJggg==")


def sdk(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base, api_key="x", max_retries=0, timeout=60)


def last(up: str, op: str = "chat") -> dict:
    return httpx.get(f"{up}/_last").json()[op]


@pytest.fixture(scope="module")
def scripted(out_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    logs = out_dir / "clients-openai"
    logs.mkdir(exist_ok=True)
    with fake_ollama(logs, "fake:latest,deep-think:latest") as up, \
            gateway(logs, tmp_path_factory.mktemp("openai"), up, OLLABRIDGE_MODEL_ALIASES="gpt-*=fake:latest") as gw:
        yield SimpleNamespace(up=up, gw=gw, sdk=sdk(f"{gw}/ollama/v1"))


# -- Responses --------------------------------------------------------------------------------------

def test_responses_whole_and_streamed(scripted):
    reply = scripted.sdk.responses.create(model="fake", input="say hi", instructions="Be brief.")
    assert reply.object == "response" and reply.status == "completed" and reply.output_text == TOKENS
    assert reply.model == "fake" and reply.usage.output_tokens == 5 and reply.usage.total_tokens == 8
    assert last(scripted.up)["messages"] == [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "say hi"}]

    events = list(scripted.sdk.responses.create(model="fake", input="say hi", max_output_tokens=3, stream=True))
    kinds = [e.type for e in events]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * 3,
                     "response.output_text.done", "response.content_part.done", "response.output_item.done",
                     "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.output_text == "tok0 tok1 tok2 " and events[-1].response.usage.output_tokens == 3
    assert last(scripted.up)["options"] == {"num_predict": 3}

    # The SDK's stream helper, with an alias and Codex's `developer` role.
    with scripted.sdk.responses.stream(model="gpt-5-mini", input=[
            {"role": "developer", "content": "Answer in tokens."}, {"role": "user", "content": "say hi"}]) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == TOKENS and final.output_text == TOKENS and final.model == "fake:latest"
    assert [m["role"] for m in last(scripted.up)["messages"]] == ["system", "user"]


def test_responses_function_tool_round_trip(scripted):
    control(scripted.up, call_tools=True, tool_args=None, tool=None)
    ask = [{"role": "user", "content": "Weather in Rome?"}]
    reply = scripted.sdk.responses.create(model="fake", input=ask, tools=[WEATHER])
    [call] = reply.output
    assert call.type == "function_call" and call.name == "get_weather" and json.loads(call.arguments) == {"city": "x"}
    assert call.call_id and call.status == "completed"

    stream = scripted.sdk.responses.create(model="fake", input=ask, tools=[WEATHER], stream=True)
    events = list(stream)
    assert "response.function_call_arguments.done" in [e.type for e in events]
    [streamed] = events[-1].response.output
    assert streamed.type == "function_call" and json.loads(streamed.arguments) == {"city": "x"}

    # The output goes back as the SDK's users send it: the call item, then its output.
    after = scripted.sdk.responses.create(model="fake", tools=[WEATHER], input=[
        *ask, call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 21}'}])
    assert after.output_text == TOKENS and [o.type for o in after.output] == ["message"]
    *_, assistant, tool = last(scripted.up)["messages"]
    assert assistant["tool_calls"] == [{"id": call.call_id, "function": {"name": "get_weather",
                                                                          "arguments": {"city": "x"}}}]
    assert tool == {"role": "tool", "content": '{"temp_c": 21}', "tool_call_id": call.call_id,
                    "tool_name": "get_weather"}


def test_responses_reasoning_image_and_statelessness(scripted):
    with scripted.sdk.responses.stream(model="deep-think", input="say hi", reasoning={"effort": "low"},
                                       max_output_tokens=2) as stream:
        summary = [e.delta for e in stream if e.type == "response.reasoning_summary_text.delta"]
        final = stream.get_final_response()
    assert summary == ["hmm "] and [o.type for o in final.output] == ["reasoning", "message"]
    assert final.output[0].summary[0].text == "hmm " and final.output_text == "tok0 tok1 "
    assert last(scripted.up)["think"] == "low"
    # An effort on a model that cannot think is dropped, not a 400.
    assert scripted.sdk.responses.create(model="fake", input="hi", reasoning={"effort": "high"}).output_text == TOKENS
    assert "think" not in last(scripted.up)

    reply = scripted.sdk.responses.create(model="fake", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": PNG_URL}]}])
    assert reply.output_text == TOKENS
    assert last(scripted.up)["messages"] == [{"role": "user", "content": "What is this?",
                                              "images": [PNG_URL.split(",", 1)[1]]}]

    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    scripted.sdk.responses.create(model="fake", input="A city?",
                                  text={"format": {"type": "json_schema", "name": "city", "schema": schema}})
    assert last(scripted.up)["format"] == schema  # Ollama's structured output

    with pytest.raises(openai.BadRequestError) as stateful:
        scripted.sdk.responses.create(model="fake", input="and then?", previous_response_id=reply.id)
    assert "stateless" in stateful.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        scripted.sdk.responses.create(model="no-such-model", input="hi")


def test_models_retrieve_by_the_name_that_chats(scripted):
    assert scripted.sdk.models.retrieve("fake").id == "fake:latest"  # "fake" answers, so it exists
    assert scripted.sdk.models.retrieve("fake:latest").id == "fake:latest"
    with pytest.raises(openai.NotFoundError):
        scripted.sdk.models.retrieve("no-such-model")


# -- Completions ------------------------------------------------------------------------------------

def test_completions_whole_streamed_and_suffix(scripted):
    reply = scripted.sdk.completions.create(model="fake", prompt="def add(a, b):", max_tokens=4, stop=["\n\n"])
    assert reply.object == "text_completion" and reply.choices[0].text == "tok0 tok1 tok2 tok3 "
    assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens == 4
    sent = last(scripted.up, "generate")
    assert sent["prompt"] == "def add(a, b):" and sent["options"] == {"num_predict": 4, "stop": ["\n\n"]}

    pieces, usage = [], None
    for chunk in scripted.sdk.completions.create(model="fake", prompt="def add(a, b):", suffix="\n    return c\n",
                                                 max_tokens=5, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}):
        pieces += [c.text for c in chunk.choices]
        usage = chunk.usage or usage
    assert "".join(pieces) == TOKENS and usage.completion_tokens == 5
    sent = last(scripted.up, "generate")
    assert sent["suffix"] == "\n    return c\n" and sent["options"]["temperature"] == 0

    with pytest.raises(openai.BadRequestError):
        scripted.sdk.completions.create(model="fake", prompt="x", n=2)


def test_a_backend_dying_mid_stream_fails_the_response(out_dir, tmp_path):
    with fake_ollama(out_dir, "fake:latest", "--chunks", "10", "--die-after", "3") as up, \
            gateway(out_dir, tmp_path, up) as gw:
        events = list(sdk(f"{gw}/v1").responses.create(model="fake", input="hi", stream=True))
        assert [e.delta for e in events if e.type == "response.output_text.delta"] == ["tok0 ", "tok1 ", "tok2 "]
        assert events[-1].type == "response.failed" and events[-1].response.status == "failed"
        assert "mid-stream" in events[-1].response.error.message


# -- the in-box engine and a node -------------------------------------------------------------------

def test_in_box_engine_responses_and_completions(gateway_url):
    client = sdk(f"{gateway_url}/ollama/v1")
    with client.responses.stream(model="gemma3:270m", input="Hello!", max_output_tokens=8) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text.strip() and final.output_text == text and 0 < final.usage.output_tokens <= 8
    done = client.completions.create(model="gemma3:270m", prompt="The capital of France is", max_tokens=6,
                                     temperature=0)
    assert done.choices[0].text.strip() and done.choices[0].finish_reason in ("stop", "length")


def test_through_a_node(out_dir: Path, tmp_path: Path):
    with ExitStack() as stack:
        cpu = stack.enter_context(fake_ollama(out_dir, "cpu-only:latest"))
        gpu = stack.enter_context(fake_ollama(out_dir, "gpu-m:latest"))
        gw = stack.enter_context(gateway(out_dir, tmp_path / "data", cpu))
        save_credential(tmp_path / "creds.json", gw, pair(gw, "openai-node"))
        stack.enter_context(node(out_dir, gw, gpu, tmp_path / "creds.json", "openai-node"))
        client = sdk(f"{gw}/v1")
        events = list(client.responses.create(model="gpu-m", input="Weather?", tools=[WEATHER], stream=True))
        [call] = events[-1].response.output
        assert call.type == "function_call" and json.loads(call.arguments) == {"city": "x"}
        after = client.responses.create(model="gpu-m", tools=[WEATHER], input=[
            {"role": "user", "content": "Weather?"}, call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
        assert after.output_text == TOKENS
        # Completions ride the relay's `generate` op.
        text = "".join(c.choices[0].text for c in client.completions.create(
            model="gpu-m", prompt="x = ", suffix=";", max_tokens=3, stream=True) if c.choices)
        assert text == "tok0 tok1 tok2 " and last(gpu, "generate")["suffix"] == ";"
        assert httpx.get(f"{cpu}/_last").json() == {}
