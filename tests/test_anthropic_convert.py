"""Anthropic Messages ↔ Ollama chat, checked as data: what Claude Code and the SDK send and read."""

from __future__ import annotations

import json

import pytest

from ollabridge.api.anthropic import convert
from ollabridge.api.anthropic.protocol import CountTokensRequest, Message, MessagesRequest
from ollabridge.api.anthropic.sse import MessageSSE
from ollabridge.errors import BadRequest, GatewayError


def _req(**fields) -> MessagesRequest:
    fields.setdefault("model", "m")
    fields.setdefault("max_tokens", 64)
    fields.setdefault("messages", [{"role": "user", "content": "Hi"}])
    return MessagesRequest.model_validate(fields)


def test_claude_codes_request_becomes_one_ollama_chat():
    body = convert.messages_request_to_ollama(_req(
        system=[{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1"},
                {"type": "text", "text": "You are Claude.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Be brief."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "say "}, {"type": "text", "text": "hi"}]},
                  {"role": "system", "content": "Agent types: ..."}],
        tools=[{"name": "Bash", "description": "run", "input_schema": {"type": "object"}},
               {"type": "web_search_20250305", "name": "web_search"}],
        thinking={"type": "adaptive"}, output_config={"effort": "high"}, metadata={"user_id": "u"},
        context_management={"edits": []}, temperature=0.2, top_k=40, stop_sequences=["END"]), "qwen2.5:7b")
    assert body["messages"] == [{"role": "system", "content": "You are Claude.\nBe brief."},
                                {"role": "user", "content": "say hi"},
                                {"role": "system", "content": "Agent types: ..."}]
    assert body["tools"] == [{"type": "function", "function": {"name": "Bash", "parameters": {"type": "object"},
                                                               "description": "run"}}]
    assert body["options"] == {"num_predict": 64, "temperature": 0.2, "top_k": 40, "stop": ["END"]}
    assert body["think"] == "high" and body["stream"] is True and body["model"] == "qwen2.5:7b"


def test_thinking_enabled_and_disabled_map_to_think():
    assert convert.messages_request_to_ollama(_req(thinking={"type": "enabled", "budget_tokens": 1024}), "m")["think"] is True
    assert convert.messages_request_to_ollama(_req(thinking={"type": "disabled"}), "m")["think"] is False
    assert "think" not in convert.messages_request_to_ollama(_req(), "m")


def test_tool_round_trip_keeps_ids_and_names_the_tool():
    body = convert.messages_request_to_ollama(_req(messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"},
                                          {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Rome"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny",
                                      "is_error": False}, {"type": "text", "text": "thanks"}]}]), "m")
    assert body["messages"][1:] == [
        {"role": "assistant", "content": "", "thinking": "t",
         "tool_calls": [{"id": "toolu_1", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "toolu_1", "tool_name": "get_weather"},
        {"role": "user", "content": "thanks"}]


def test_images_must_be_base64_and_tool_choice_none_drops_tools():
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QUJD"}}
    body = convert.messages_request_to_ollama(_req(messages=[{"role": "user", "content": [image]}]), "m")
    assert body["messages"] == [{"role": "user", "content": "", "images": ["QUJD"]}]
    with pytest.raises(BadRequest, match="base64"):
        convert.messages_request_to_ollama(_req(messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}]), "m")
    tools = [{"name": "f", "input_schema": {"type": "object"}}]
    assert "tools" not in convert.messages_request_to_ollama(_req(tools=tools, tool_choice={"type": "none"}), "m")


def _chunks(*messages, done_reason="stop"):
    out = [{"model": "m", "message": {"role": "assistant", **m}, "done": False} for m in messages]
    out.append({"model": "m", "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": done_reason,
                "prompt_eval_count": 7, "eval_count": 3})
    return out


def _events(raw: bytes) -> list[tuple[str, dict]]:
    events = []
    for block in raw.decode().strip().split("\n\n"):
        name, data = block.split("\n", 1)
        events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


def test_stream_sends_blocks_in_anthropics_order():
    encoder = MessageSSE("m")
    raw = b"".join(encoder.encode(c) for c in _chunks(
        {"thinking": "hmm"}, {"content": "Hel"}, {"content": "lo"},
        {"tool_calls": [{"id": "call_1", "function": {"name": "f", "arguments": {"a": 1}}}]}))
    events = _events(raw)
    assert [name for name, _ in events] == [
        "message_start", "ping", "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert all(data["type"] == name for name, data in events)
    assert [e[1]["index"] for e in events if e[0] == "content_block_start"] == [0, 1, 2]
    assert events[-2][1] == {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                             "usage": {"input_tokens": 7, "output_tokens": 3}}
    assert events[10][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"a": 1}'}
    assert encoder.keepalive.startswith(b"event: ping")
    error = _events(encoder.error(GatewayError("node lost", status=502)))
    assert error == [("error", {"type": "error", "error": {"type": "api_error", "message": "node lost"}})]


def test_keepalive_before_the_start_is_a_comment():
    assert MessageSSE("m").keepalive == b": keep-alive\n\n"


def test_aggregated_message_matches_the_message_model():
    message = Message.model_validate(convert.aggregate_message(_chunks({"content": "Hi"}, done_reason="length"), "m"))
    assert message.content[0].text == "Hi" and message.stop_reason == "max_tokens"
    assert message.usage.input_tokens == 7 and message.usage.output_tokens == 3
    empty = convert.aggregate_message(_chunks(), "m")
    assert empty["content"] == [] and Message.model_validate(empty).stop_reason == "end_turn"


def test_count_tokens_is_a_quarter_of_the_characters():
    req = CountTokensRequest.model_validate({"model": "m", "system": "x" * 40,
                                             "messages": [{"role": "user", "content": "y" * 36}]})
    assert convert.estimate_tokens(req) == (40 + len("user") + 36) // 4


def test_errors_have_anthropics_shape_and_types():
    assert convert.error_body(404, "no model") == {"type": "error", "error": {"type": "not_found_error",
                                                                              "message": "no model"}}
    assert convert.error_body(503, "busy")["error"]["type"] == "overloaded_error"
    assert convert.error_body(502, "x")["error"]["type"] == "api_error"
