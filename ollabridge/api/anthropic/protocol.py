"""Anthropic Messages wire models: the requests `/v1/messages` accepts and the answers it gives.

Requests accept fields the gateway does not use (Claude Code sends `metadata`, `context_management`,
`output_config`, `cache_control` ...): they are ignored. Answers forbid undeclared fields, and
tests/test_anthropic_protocol.py validates real answers against them.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- requests ---------------------------------------------------------------------------
class ImageSource(_Open):
    type: str = Field(..., description="`base64` (the gateway fetches no URL for a caller)")
    media_type: Optional[str] = None
    data: Optional[str] = None


class Block(_Open):
    """One content block: text, image, tool_use, tool_result, thinking (others are skipped)."""

    type: str
    text: Optional[str] = None
    source: Optional[ImageSource] = None
    id: Optional[str] = None
    name: Optional[str] = None
    input: Optional[Any] = None
    tool_use_id: Optional[str] = None
    content: Optional[Union[str, list["Block"]]] = None
    is_error: Optional[bool] = None
    thinking: Optional[str] = None
    signature: Optional[str] = None


class MessageParam(_Open):
    role: Literal["user", "assistant", "system"]
    content: Union[str, list[Block]]


class ToolDef(_Open):
    name: str = Field(..., min_length=1)
    description: Optional[str] = None
    input_schema: Optional[dict[str, Any]] = None
    type: Optional[str] = Field(None, description="`custom` or none; server tools (web_search_...) are dropped")


class ToolChoice(_Open):
    type: Literal["auto", "any", "tool", "none"]
    name: Optional[str] = None


class ThinkingConfig(_Open):
    type: str = Field(..., description="enabled | disabled | adaptive")
    budget_tokens: Optional[int] = None


class OutputConfig(_Open):
    effort: Optional[str] = None


class MessagesRequest(_Open):
    model: str = Field(..., min_length=1, description="A served model, an alias (OLLABRIDGE_MODEL_ALIASES) or `default`")
    max_tokens: int = Field(..., ge=1)
    messages: list[MessageParam] = Field(..., min_length=1)
    system: Optional[Union[str, list[Block]]] = None
    stream: bool = False
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, ge=0, le=1)
    top_k: Optional[int] = Field(None, ge=0)
    stop_sequences: Optional[list[str]] = None
    tools: Optional[list[ToolDef]] = None
    tool_choice: Optional[ToolChoice] = None
    thinking: Optional[ThinkingConfig] = None
    output_config: Optional[OutputConfig] = None


class CountTokensRequest(_Open):
    model: str = Field(..., min_length=1)
    messages: list[MessageParam] = Field(..., min_length=1)
    system: Optional[Union[str, list[Block]]] = None
    tools: Optional[list[ToolDef]] = None


# -- answers ----------------------------------------------------------------------------
class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MessageUsage(_Answer):
    input_tokens: int
    output_tokens: int


class TextBlock(_Answer):
    type: Literal["text"] = "text"
    text: str


class ThinkingBlock(_Answer):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str = Field("", description="Always empty: local models sign nothing")


class ToolUseBlock(_Answer):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class Message(_Answer):
    """The answer of a non-streamed request (streamed: the same, as events)."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[Union[ThinkingBlock, TextBlock, ToolUseBlock]]
    stop_reason: Optional[Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]] = None
    stop_sequence: Optional[str] = None
    usage: MessageUsage


class TokenCount(_Answer):
    input_tokens: int


class AnthropicErrorDetail(_Answer):
    type: str
    message: str


class AnthropicError(_Answer):
    type: Literal["error"] = "error"
    error: AnthropicErrorDetail
