"""OpenAI Responses API wire models (`POST /v1/responses`), stateless as Ollama serves it.

Requests accept the fields Codex and the SDKs send that a stateless gateway has no use for
(`store`, `include`, `prompt_cache_key`, `client_metadata`, `parallel_tool_calls`, ...). Answers
forbid undeclared fields; tests/test_responses.py validates real answers against them.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


# -- requests ---------------------------------------------------------------------------
class InputPart(_Open):
    type: str = Field(..., description="input_text | output_text | input_image (data URL)")
    text: Optional[str] = None
    image_url: Optional[str] = None


class InputItem(_Open):
    """A message (`type: message`, or just a `role`), a `function_call`, a `function_call_output`
    or a `reasoning` item."""

    type: Optional[str] = None
    role: Optional[Literal["user", "assistant", "system", "developer"]] = None
    content: Optional[Union[str, list[InputPart]]] = None
    call_id: Optional[str] = None
    name: Optional[str] = None
    namespace: Optional[str] = None
    arguments: Optional[str] = None
    output: Optional[Union[str, list[InputPart]]] = None
    encrypted_content: Optional[str] = None
    summary: Optional[list[dict[str, Any]]] = None


class ResponsesTool(_Open):
    type: str = Field(..., description="function | namespace (its tools, flattened); others are dropped")
    name: Optional[str] = None
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    tools: Optional[list["ResponsesTool"]] = None


class TextFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    name: Optional[str] = None
    schema_: Optional[dict[str, Any]] = Field(None, alias="schema")


class TextConfig(_Open):
    format: Optional[TextFormat] = None


class Reasoning(_Open):
    effort: Optional[Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]] = None
    summary: Optional[str] = None


class ResponsesRequest(_Open):
    model: Optional[str] = Field(None, description="Model name; defaults to OLLABRIDGE_DEFAULT_MODEL.")
    input: Union[str, list[InputItem]]
    instructions: Optional[str] = None
    tools: Optional[list[ResponsesTool]] = None
    tool_choice: Optional[Union[str, dict[str, Any]]] = None
    max_output_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, ge=0, le=1)
    text: Optional[TextConfig] = None
    reasoning: Optional[Reasoning] = None
    stream: bool = False
    previous_response_id: Optional[str] = Field(None, description="Refused: the gateway keeps no responses")
    conversation: Optional[Any] = Field(None, description="Refused: the gateway keeps no conversations")


# -- answers ----------------------------------------------------------------------------
class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OutputText(_Answer):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = []
    logprobs: list[Any] = []


class OutputMessage(_Answer):
    id: str
    type: Literal["message"] = "message"
    status: Literal["in_progress", "completed"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class FunctionCallItem(_Answer):
    id: str
    type: Literal["function_call"] = "function_call"
    status: Literal["in_progress", "completed"]
    call_id: str
    name: str
    namespace: Optional[str] = None
    arguments: str


class SummaryText(_Answer):
    type: Literal["summary_text"] = "summary_text"
    text: str


class ReasoningItem(_Answer):
    id: str
    type: Literal["reasoning"] = "reasoning"
    summary: list[SummaryText]
    encrypted_content: Optional[str] = None


class TokenDetails(_Answer):
    cached_tokens: int = 0


class OutputDetails(_Answer):
    reasoning_tokens: int = 0


class ResponseUsage(_Answer):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: TokenDetails
    output_tokens_details: OutputDetails


class ResponseError(_Answer):
    code: str
    message: str


class Response(_Answer):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "failed"]
    model: str
    output: list[Union[ReasoningItem, OutputMessage, FunctionCallItem]]
    usage: Optional[ResponseUsage] = None
    error: Optional[ResponseError] = None
    incomplete_details: Optional[dict[str, Any]] = None
    instructions: Optional[str] = None
    max_output_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    tools: list[dict[str, Any]] = []
    tool_choice: Union[str, dict[str, Any]] = "auto"
    parallel_tool_calls: bool = True
    text: dict[str, Any] = {}
    reasoning: Optional[dict[str, Any]] = None
    previous_response_id: Optional[str] = None
    store: bool = False
    metadata: dict[str, Any] = {}
