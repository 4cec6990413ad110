"""OpenAI Responses and Completions ↔ Ollama, checked as data: what Codex and the SDK send and read."""

from __future__ import annotations

import json

import pytest

from ollabridge.api.openai import completions, responses_convert as convert
from ollabridge.api.openai.responses_protocol import Response, ResponsesRequest
from ollabridge.api.openai.responses_sse import ResponseSSE
from ollabridge.errors import BadRequest, GatewayError


def _req(**fields) -> ResponsesRequest:
    fields.setdefault("model", "m")
    fields.setdefault("input", "Hi")
    return ResponsesRequest.model_validate(fields)


CODEX_TOOLS = [{"type": "function", "name": "exec_command", "description": "run", "strict": False,
                "parameters": {"type": "object"}},
               {"type": "namespace", "name": "multi_agent_v1", "description": "agents",
                "tools": [{"type": "function", "name": "wait_agent", "parameters": {"type": "object"}}]},
               {"type": "web_search", "external_web_access": False}]


def test_codexs_request_becomes_one_ollama_chat():
    body, namespaced = convert.responses_request_to_ollama(_req(
        input=[{"type": "message", "id": "msg_1", "role": "developer",
                "content": [{"type": "input_text", "text": "You are Codex."}]},
               {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "say hi"}]}],
        tools=CODEX_TOOLS, tool_choice="auto", parallel_tool_calls=True, store=False,
        include=["reasoning.encrypted_content"], prompt_cache_key="k", client_metadata={"a": "b"},
        reasoning={"summary": "auto"}), "qwen2.5:7b")
    assert body["messages"] == [{"role": "system", "content": "You are Codex."}, {"role": "user", "content": "say hi"}]
    assert [t["function"]["name"] for t in body["tools"]] == ["exec_command", "multi_agent_v1.wait_agent"]
    assert namespaced == {"multi_agent_v1.wait_agent": ("multi_agent_v1", "wait_agent")}
    assert "think" not in body and body["options"] == {} and body["stream"] is True


def test_function_call_round_trip_and_reasoning_items():
    body, _ = convert.responses_request_to_ollama(_req(instructions="Be brief.", input=[
        {"role": "user", "content": "run it"},
        {"type": "reasoning", "encrypted_content": "I should run it", "summary": []},
        {"type": "function_call", "id": "fc_1", "status": "completed", "call_id": "call_1", "name": "wait_agent",
         "namespace": "multi_agent_v1", "arguments": "{\"id\": 3}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "done"}],
        max_output_tokens=20, temperature=0.1, reasoning={"effort": "minimal"},
        text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}}), "m")
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "run it"},
        {"role": "assistant", "content": "", "thinking": "I should run it",
         "tool_calls": [{"id": "call_1", "function": {"name": "multi_agent_v1.wait_agent", "arguments": {"id": 3}}}]},
        {"role": "tool", "content": "done", "tool_call_id": "call_1", "tool_name": "multi_agent_v1.wait_agent"}]
    assert body["options"] == {"num_predict": 20, "temperature": 0.1}
    assert body["think"] == "low" and body["format"] == {"type": "object"}


@pytest.mark.parametrize("field,value", [("previous_response_id", "resp_1"), ("conversation", "conv_1")])
def test_state_the_gateway_does_not_keep_is_refused(field, value):
    with pytest.raises(BadRequest, match="stateless"):
        convert.responses_request_to_ollama(_req(**{field: value}), "m")


def test_image_urls_are_refused_data_urls_work():
    part = {"type": "input_image", "image_url": "data:image/png;base64,QUJD"}
    body, _ = convert.responses_request_to_ollama(_req(input=[{"role": "user", "content": [part]}]), "m")
    assert body["messages"][0]["images"] == ["QUJD"]
    with pytest.raises(BadRequest, match="data URL"):
        convert.responses_request_to_ollama(_req(input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": "https://example.com/a.png"}]}]), "m")


def _chunks(*messages):
    out = [{"model": "m", "message": {"role": "assistant", **m}, "done": False} for m in messages]
    out.append({"model": "m", "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
                "prompt_eval_count": 5, "eval_count": 2})
    return out


def _events(raw: bytes) -> list[dict]:
    out = []
    for block in raw.decode().strip().split("\n\n"):
        name, data = block.split("\n", 1)
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        out.append(event)
    return out


def test_stream_sends_typed_events_in_order_with_sequence_numbers():
    req = _req(tools=CODEX_TOOLS)
    encoder = ResponseSSE(req, "m", {"multi_agent_v1.wait_agent": ("multi_agent_v1", "wait_agent")})
    events = _events(b"".join(encoder.encode(c) for c in _chunks(
        {"thinking": "plan"}, {"content": "Hel"}, {"content": "lo"},
        {"tool_calls": [{"id": "call_9", "function": {"name": "multi_agent_v1.wait_agent", "arguments": {"id": 1}}}]})))
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = Response.model_validate(events[-1]["response"])
    assert final.status == "completed" and final.usage.total_tokens == 7
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call"]
    call = final.output[2]
    assert (call.name, call.namespace, json.loads(call.arguments)) == ("wait_agent", "multi_agent_v1", {"id": 1})
    assert final.output[1].content[0].text == "Hello"
    failed = _events(encoder.error(GatewayError("node lost", status=502)))
    assert failed[0]["type"] == "response.failed" and failed[0]["response"]["error"]["message"] == "node lost"


def test_aggregated_response_matches_the_model():
    answer = Response.model_validate(convert.aggregate_response(_chunks({"content": "Hi"}), _req(), "m", {}))
    assert answer.output[0].content[0].text == "Hi" and answer.usage.input_tokens == 5


def test_completions_map_to_generate_and_back():
    req = completions.CompletionRequest.model_validate({"model": "m", "prompt": ["def f("], "suffix": "\n    return x",
                                                        "max_tokens": 9, "stop": "\n\n", "seed": 1})
    body = completions.completion_request_to_ollama(req, "m")
    assert body == {"model": "m", "prompt": "def f(", "suffix": "\n    return x", "stream": True,
                    "options": {"num_predict": 9, "seed": 1, "stop": ["\n\n"]}}
    for bad in ({"n": 2}, {"echo": True}, {"best_of": 3}, {"prompt": ["a", "b"]}):
        with pytest.raises(BadRequest):
            completions.completion_request_to_ollama(
                completions.CompletionRequest.model_validate({"prompt": "x", **bad}), "m")
    chunks = [{"response": "a", "done": False}, {"response": "b", "done": True, "done_reason": "length",
                                                   "prompt_eval_count": 2, "eval_count": 2}]
    whole = completions.Completion.model_validate(completions.aggregate_completion(chunks, "m"))
    assert whole.choices[0].text == "ab" and whole.choices[0].finish_reason == "length"
    encoder = completions.CompletionSSE("m", include_usage=True)
    raw = b"".join(encoder.encode(c) for c in chunks) + encoder.end()
    events = [line[6:] for line in raw.decode().split("\n\n") if line]
    assert events[-1] == "[DONE]"
    parsed = [completions.Completion.model_validate_json(e) for e in events[:-1]]
    assert "".join(c.choices[0].text for c in parsed if c.choices) == "ab"
    assert parsed[-1].choices == [] and parsed[-1].usage.total_tokens == 4
