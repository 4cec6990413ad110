"""The OpenAI response models describe what the gateway really answers.

They forbid fields they do not declare, so a converter that starts sending an undocumented field
(or drops a required one) fails here; /docs and the schemathesis test read the same models.
"""

from __future__ import annotations

import json

import httpx
import pytest
from pydantic import ValidationError

from ollabridge.api.openai import convert
from ollabridge.api.openai.protocol import (ChatCompletion, ChatCompletionChunk, EmbeddingResponse, ErrorResponse,
                                            ModelCard, ModelList)
from tests.relay_support import fake_ollama, gateway


def _stream(*messages, done_reason="stop"):
    chunks = [{"model": "m", "message": {"role": "assistant", **m}, "done": False} for m in messages]
    chunks.append({"model": "m", "message": {"role": "assistant", "content": ""}, "done": True,
                   "done_reason": done_reason, "prompt_eval_count": 4, "eval_count": 2})
    return chunks


CALL = {"function": {"name": "get_weather", "arguments": {"city": "Rome"}}}


def test_streamed_chunks_with_text_tool_calls_and_usage_match_the_chunk_model():
    translator = convert.StreamTranslator("m", include_usage=True)
    events = [e for c in _stream({"content": "Hi"}, {"tool_calls": [CALL]}) for e in translator.translate(c)]
    for event in events:
        ChatCompletionChunk.model_validate(event)
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["total_tokens"] == 6


def test_aggregated_completion_with_tool_calls_matches_the_completion_model():
    answer = ChatCompletion.model_validate(convert.aggregate_completion(_stream({"tool_calls": [CALL]}), "m"))
    call = answer.choices[0].message.tool_calls[0]
    assert json.loads(call.function.arguments) == {"city": "Rome"} and answer.choices[0].finish_reason == "tool_calls"


def test_models_embeddings_and_errors_match_their_models():
    listing = convert.models_to_openai([{"name": "a:latest", "notice": "base model",
                                         "ollabridge": {"kind": "inbox"}}, {"model": "b"}])
    assert [c.id for c in ModelList.model_validate(listing).data] == ["a:latest", "b"]
    for fmt in ("float", "base64"):
        EmbeddingResponse.model_validate(convert.embedding_response({"embeddings": [[0.5, 1.0]]}, "m", fmt))
    ErrorResponse.model_validate(convert.error_body("nope", "invalid_request_error", "model_not_found", "model"))


def test_an_undeclared_field_fails_validation():
    chunk = convert.StreamTranslator("m").translate(_stream({"content": "x"})[0])[0]
    with pytest.raises(ValidationError):
        ChatCompletionChunk.model_validate({**chunk, "surprise": 1})


@pytest.fixture(scope="module")
def gw(out_dir, tmp_path_factory):
    with fake_ollama(out_dir, "fake:latest") as upstream, \
            gateway(out_dir, tmp_path_factory.mktemp("gw"), upstream) as url:
        yield url


def test_real_answers_match_the_models(gw):
    chat = {"model": "fake:latest", "messages": [{"role": "user", "content": "Hi"}]}
    whole = httpx.post(f"{gw}/v1/chat/completions", json=chat, timeout=30)
    assert whole.status_code == 200
    assert ChatCompletion.model_validate(whole.json()).choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 "
    with httpx.stream("POST", f"{gw}/ollama/v1/chat/completions", timeout=30,
                      json={**chat, "stream": True, "stream_options": {"include_usage": True}}) as streamed:
        events = [line[6:] for line in streamed.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "tok0 tok1 tok2 tok3 tok4 "
    assert [c.id for c in ModelList.model_validate(httpx.get(f"{gw}/v1/models").json()).data] == ["fake:latest"]
    ModelCard.model_validate(httpx.get(f"{gw}/v1/models/fake:latest").json())
    embedded = httpx.post(f"{gw}/v1/embeddings", json={"model": "fake:latest", "input": ["a", "bb"]})
    assert len(EmbeddingResponse.model_validate(embedded.json()).data) == 2
    missing = httpx.post(f"{gw}/v1/chat/completions", json={**chat, "model": "nope"})
    assert missing.status_code == 404
    assert ErrorResponse.model_validate(missing.json()).error.code == "model_not_found"
