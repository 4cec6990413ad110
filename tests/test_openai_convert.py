"""The OpenAI ↔ Ollama translation, checked as data: what a client would see on the wire."""

from __future__ import annotations

import base64
import json
import struct

from ollabridge.api.openai import convert
from ollabridge.api.openai.protocol import ChatCompletionRequest, EmbeddingRequest


def _req(**fields) -> ChatCompletionRequest:
    fields.setdefault("messages", [{"role": "user", "content": "Hi"}])
    return ChatCompletionRequest.model_validate(fields)


def test_request_maps_sampling_fields_to_ollama_options():
    body = convert.chat_request_to_ollama(
        _req(temperature=0.2, top_p=0.9, seed=7, stop="END", max_tokens=5, max_completion_tokens=9), "m")
    assert body["model"] == "m" and body["stream"] is True
    assert body["options"] == {"temperature": 0.2, "top_p": 0.9, "seed": 7, "stop": ["END"], "num_predict": 9}


def test_default_temperature_is_seeds_0_7():
    assert convert.chat_request_to_ollama(_req(), "m")["options"]["temperature"] == 0.7


def test_content_parts_become_text_and_images():
    body = convert.chat_request_to_ollama(_req(messages=[{"role": "user", "content": [
        {"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}},
        {"type": "text", "text": "here"}]}]), "m")
    assert body["messages"] == [{"role": "user", "content": "look\nhere", "images": ["QUJD"]}]


def test_response_format_maps_to_ollama_format():
    assert convert.chat_request_to_ollama(_req(response_format={"type": "json_object"}), "m")["format"] == "json"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    body = convert.chat_request_to_ollama(
        _req(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}), "m")
    assert body["format"] == schema
    assert "format" not in convert.chat_request_to_ollama(_req(response_format={"type": "text"}), "m")


def test_tools_pass_through_and_assistant_tool_calls_get_dict_arguments():
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    body = convert.chat_request_to_ollama(_req(tools=[tool], messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]), "m")
    assert body["tools"][0]["function"]["name"] == "get_weather"
    assert body["messages"][1]["tool_calls"] == [{"id": "call_1", "function": {"name": "get_weather",
                                                                                "arguments": {"city": "Rome"}}}]
    # The tool result keeps its id and names the tool it answers (Ollama's templates read tool_name).
    assert body["messages"][2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1",
                                   "tool_name": "get_weather"}
    assert "tools" not in convert.chat_request_to_ollama(_req(tools=[tool], tool_choice="none"), "m")


def _ollama_stream(*texts, done_reason="stop"):
    chunks = [{"model": "m", "message": {"role": "assistant", "content": t}, "done": False} for t in texts]
    chunks.append({"model": "m", "message": {"role": "assistant", "content": ""}, "done": True,
                   "done_reason": done_reason, "prompt_eval_count": 3, "eval_count": len(texts)})
    return chunks


def test_stream_chunks_have_openai_shape_and_final_usage():
    tr = convert.StreamTranslator("m")
    events = [e for c in _ollama_stream("Hel", "lo") for e in tr.translate(c)]
    assert [e["choices"][0]["delta"].get("content") for e in events] == ["Hel", "lo", None]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    for e in events:
        assert e["id"].startswith("chatcmpl-") and e["id"] == tr.id
        assert e["object"] == "chat.completion.chunk" and e["model"] == "m" and isinstance(e["created"], int)
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_include_usage_adds_the_usage_only_chunk_and_length_maps():
    tr = convert.StreamTranslator("m", include_usage=True)
    events = [e for c in _ollama_stream("a", done_reason="length") for e in tr.translate(c)]
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 1


def test_streamed_tool_calls_get_index_id_and_string_arguments():
    tr = convert.StreamTranslator("m")
    call = {"function": {"name": "f", "arguments": {"x": 1}}}
    events = tr.translate({"message": {"role": "assistant", "content": "", "tool_calls": [call, call]}, "done": False})
    events += tr.translate({"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop"})
    calls = events[0]["choices"][0]["delta"]["tool_calls"]
    assert [c["index"] for c in calls] == [0, 1]
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)
    assert json.loads(calls[0]["function"]["arguments"]) == {"x": 1}
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_aggregate_joins_content_and_reports_tool_calls():
    result = convert.aggregate_completion(_ollama_stream("Hel", "lo"), "m")
    assert result["object"] == "chat.completion" and result["id"].startswith("chatcmpl-")
    assert result["choices"][0]["message"] == {"role": "assistant", "content": "Hello"}
    assert result["usage"]["total_tokens"] == 5
    tool = convert.aggregate_completion([{"message": {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "f", "arguments": {"a": "b"}}}]}, "done": True, "done_reason": "stop"}], "m")
    choice = tool["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a": "b"}'}


def test_embeddings_float_and_base64():
    result = {"embeddings": [[0.5, -1.0], [0.25, 2.0]], "prompt_eval_count": 4}
    out = convert.embedding_response(result, "m", "float")
    assert [d["embedding"] for d in out["data"]] == [[0.5, -1.0], [0.25, 2.0]]
    assert out["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    packed = convert.embedding_response(result, "m", "base64")["data"][1]["embedding"]
    assert struct.unpack("<2f", base64.b64decode(packed)) == (0.25, 2.0)
    body = convert.embedding_request_to_ollama(EmbeddingRequest(input=["a", "b"]), "m")
    assert body == {"model": "m", "input": ["a", "b"]}


def test_models_list_in_openai_shape():
    listing = convert.models_to_openai([{"name": "a:1", "modified_at": "2024-01-02T03:04:05Z"}, {"model": "b"}])
    assert listing["object"] == "list"
    assert [(m["id"], m["object"]) for m in listing["data"]] == [("a:1", "model"), ("b", "model")]
    assert listing["data"][0]["created"] == 1704164645


def test_reasoning_effort_and_logprobs_reach_ollama():
    body = convert.chat_request_to_ollama(_req(reasoning_effort="high", logprobs=True, top_logprobs=3), "m")
    assert body["think"] == "high" and body["logprobs"] is True and body["top_logprobs"] == 3
    assert convert.chat_request_to_ollama(_req(reasoning_effort="none"), "m")["think"] is False
    assert "think" not in convert.chat_request_to_ollama(_req(), "m")
    history = convert.chat_request_to_ollama(_req(messages=[
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning_content": "thought"}]), "m")
    assert history["messages"][1] == {"role": "assistant", "content": "a", "thinking": "thought"}


def test_thinking_and_logprobs_come_back_in_openai_fields():
    lp = [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": [{"token": "Hi", "logprob": -0.1}]}]
    stream = [{"model": "m", "message": {"role": "assistant", "thinking": "hmm"}, "done": False},
              {"model": "m", "message": {"role": "assistant", "content": "Hi"}, "logprobs": lp, "done": False},
              {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
               "prompt_eval_count": 1, "eval_count": 2}]
    tr = convert.StreamTranslator("m")
    chunks = [c for s in stream for c in tr.translate(s)]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "reasoning_content": "hmm"}
    assert chunks[1]["choices"][0]["logprobs"] == {"content": lp}
    whole = convert.aggregate_completion(stream, "m")["choices"][0]
    assert whole["message"]["reasoning_content"] == "hmm" and whole["logprobs"] == {"content": lp}


def test_image_urls_are_refused_data_urls_work():
    import pytest

    from ollabridge.errors import BadRequest

    with pytest.raises(BadRequest, match="data URL"):
        convert.chat_request_to_ollama(_req(messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]), "m")
