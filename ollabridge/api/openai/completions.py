"""OpenAI's legacy Completions API (`POST /v1/completions`) on Ollama's `/api/generate`.

Models, pure converters and the SSE encoder of one small API: a prompt (a string, or a list of one),
`suffix` for fill-in-the-middle (the model's template must support it, as with Ollama), sampling
fields, and `text_completion` chunks with usage and `[DONE]`. What Ollama has no equivalent for
(n > 1, echo, best_of) is refused with a 400.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Iterable, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from ollabridge.api.errors import sse_error_event
from ollabridge.api.openai.protocol import StreamOptions, Usage
from ollabridge.api.streaming import DONE, SSEEncoder, sse_data
from ollabridge.errors import BadRequest, GatewayError

_FINISH = {"stop": "stop", "length": "length"}


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: Optional[str] = Field(None, description="Model name; defaults to OLLABRIDGE_DEFAULT_MODEL.")
    prompt: Union[str, list[str]] = Field(..., description="A string, or a list of exactly one")
    suffix: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, ge=0, le=1)
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = None
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: Optional[int] = Field(None, description="Only 1")
    best_of: Optional[int] = Field(None, description="Only 1")
    echo: Optional[bool] = Field(None, description="Not supported")


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CompletionChoice(_Answer):
    text: str
    index: int = 0
    logprobs: None = None
    finish_reason: Optional[Literal["stop", "length"]] = None


class Completion(_Answer):
    """The answer, or (with `stream: true`) one SSE `data:` event of it."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Optional[Usage] = None


def completion_request_to_ollama(req: CompletionRequest, model: str) -> dict[str, Any]:
    """A Completions request → the body of Ollama's `POST /api/generate` (always streamed)."""
    for field, bad in (("n", (req.n or 1) > 1), ("best_of", (req.best_of or 1) > 1), ("echo", bool(req.echo))):
        if bad:
            raise BadRequest(f"'{field}' is not supported: Ollama generates one completion per request.", param=field)
    prompt = req.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise BadRequest("'prompt' may be a list of exactly one string (send one request per prompt).",
                             param="prompt")
        prompt = prompt[0]
    options: dict[str, Any] = {}
    for name, value in (("num_predict", req.max_tokens), ("temperature", req.temperature), ("top_p", req.top_p),
                        ("seed", req.seed), ("frequency_penalty", req.frequency_penalty),
                        ("presence_penalty", req.presence_penalty)):
        if value is not None:
            options[name] = value
    if req.stop:
        options["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    body: dict[str, Any] = {"model": model, "prompt": prompt, "stream": True, "options": options}
    if req.suffix:
        body["suffix"] = req.suffix
    return body


def _usage(chunk: dict[str, Any]) -> dict[str, int]:
    prompt, completion = int(chunk.get("prompt_eval_count") or 0), int(chunk.get("eval_count") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _new_id() -> str:
    return f"cmpl-{secrets.token_hex(12)}"


def aggregate_completion(chunks: Iterable[dict[str, Any]], model: str) -> dict[str, Any]:
    """All Ollama `/api/generate` objects of one reply → one `text_completion`."""
    text: list[str] = []
    last: dict[str, Any] = {}
    for chunk in chunks:
        text.append(chunk.get("response") or "")
        last = chunk
    return {"id": _new_id(), "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"text": "".join(text), "index": 0, "logprobs": None,
                         "finish_reason": _FINISH.get(last.get("done_reason") or "stop", "stop")}],
            "usage": _usage(last)}


class CompletionSSE(SSEEncoder):
    def __init__(self, model: str, include_usage: bool = False) -> None:
        self.id = _new_id()
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage

    def _chunk(self, text: str, finish: str | None, usage: dict[str, int] | None = None,
               choices: bool = True) -> bytes:
        event: dict[str, Any] = {"id": self.id, "object": "text_completion", "created": self.created,
                                 "model": self.model,
                                 "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]
                                 if choices else []}
        if usage is not None:
            event["usage"] = usage
        return sse_data(event)

    def encode(self, chunk: dict[str, Any]) -> bytes:
        text = chunk.get("response") or ""
        if not chunk.get("done"):
            return self._chunk(text, None) if text else b""
        out = self._chunk(text, _FINISH.get(chunk.get("done_reason") or "stop", "stop"), _usage(chunk))
        if self.include_usage:
            out += self._chunk("", None, _usage(chunk), choices=False)
        return out

    def end(self) -> bytes:
        return DONE

    def error(self, err: GatewayError) -> bytes:
        return sse_error_event(err.message, err.type, err.code) + DONE
