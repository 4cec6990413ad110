"""OpenAI wire models: every request and response shape of the `/v1` API in one place."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    """Clients send fields we do not use (user, logprobs, ...): accept and ignore them."""

    model_config = ConfigDict(extra="allow")


# -- requests ---------------------------------------------------------------------------
class ContentPart(_Open):
    type: str
    text: Optional[str] = None
    image_url: Optional[Union[str, dict[str, Any]]] = None


class FunctionCall(_Open):
    name: str
    arguments: Union[str, dict[str, Any]] = "{}"


class ToolCall(_Open):
    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: FunctionCall
    index: Optional[int] = None


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Optional[Union[str, list[ContentPart]]] = None
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None
    tool_call_id: Optional[str] = None


class FunctionDef(_Open):
    name: str
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None


class Tool(_Open):
    type: Literal["function"] = "function"
    function: FunctionDef


class JsonSchemaFormat(_Open):
    name: Optional[str] = None
    schema_: Optional[dict[str, Any]] = Field(None, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None


class StreamOptions(_Open):
    include_usage: bool = False


class ChatCompletionRequest(_Open):
    model: Optional[str] = Field(None, description="Model name; defaults to OLLABRIDGE_DEFAULT_MODEL.")
    messages: list[ChatMessage] = Field(..., min_length=1)
    temperature: Optional[float] = Field(0.7, ge=0, le=2)
    top_p: Optional[float] = Field(None, ge=0, le=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = None
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    n: Optional[int] = Field(1, ge=1, le=1, description="Only 1 is supported.")
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    response_format: Optional[ResponseFormat] = None
    tools: Optional[list[Tool]] = None
    tool_choice: Optional[Union[str, dict[str, Any]]] = None
    reasoning_effort: Optional[Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]] = Field(
        None, description="→ Ollama's think; the model's thinking comes back as `reasoning_content`")
    reasoning: Optional[dict[str, Any]] = Field(None, description="`{effort}`, as reasoning_effort")
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)


class EmbeddingRequest(_Open):
    model: Optional[str] = None
    input: Union[str, list[str], list[int], list[list[int]]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = Field(None, ge=1)


# -- responses ------------------------------------------------------------------------
# What the gateway really answers: tests/test_openai_protocol.py validates real answers against these,
# and they forbid fields they do not declare, so an undocumented field fails that test.
class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Usage(_Answer):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ResponseFunction(_Answer):
    name: str
    arguments: str = Field(..., description="The arguments as a JSON text")


class ResponseToolCall(_Answer):
    id: str
    type: Literal["function"] = "function"
    function: ResponseFunction


class ChunkToolCall(ResponseToolCall):
    index: int


class ResponseMessage(_Answer):
    role: Literal["assistant"] = "assistant"
    content: Optional[str] = None
    reasoning_content: Optional[str] = Field(None, description="The model's thinking (Ollama's `thinking`)")
    tool_calls: Optional[list[ResponseToolCall]] = None


class TopLogprob(_Answer):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChoiceLogprobs(_Answer):
    content: list[TokenLogprob]


class Choice(_Answer):
    index: int = 0
    message: ResponseMessage
    finish_reason: Optional[str] = None
    logprobs: Optional[ChoiceLogprobs] = None


class ChatCompletion(_Answer):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: Optional[str] = None


class ChunkDelta(_Answer):
    role: Optional[str] = None
    content: Optional[str] = None
    reasoning_content: Optional[str] = None
    tool_calls: Optional[list[ChunkToolCall]] = None


class ChunkChoice(_Answer):
    index: int = 0
    delta: ChunkDelta
    finish_reason: Optional[str] = None
    logprobs: Optional[ChoiceLogprobs] = None


class ChatCompletionChunk(_Answer):
    """One SSE `data:` event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Optional[Usage] = None


class ModelCard(_Answer):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = Field(..., description="ollama, upstream, node or inbox: which kind of backend serves it")
    notice: Optional[str] = Field(None, description="e.g. the in-box engine's 'base model' notice")


class ModelList(_Answer):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Embedding(_Answer):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[list[float], str]


class EmbeddingUsage(_Answer):
    prompt_tokens: int = 0
    total_tokens: int = 0


class EmbeddingResponse(_Answer):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ErrorDetail(_Answer):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(_Answer):
    error: ErrorDetail
