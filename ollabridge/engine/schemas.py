"""Request bodies of the Ollama API, as pydantic models. Unknown fields are accepted and ignored."""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ToolCallFunction(_Body):
    name: str = ""
    arguments: Union[dict[str, Any], str, None] = None


class ToolCall(_Body):
    function: ToolCallFunction


class Message(_Body):
    role: str
    content: Optional[str] = ""
    images: Optional[list[Any]] = None  # accepted, ignored: the in-box model has no vision
    tool_calls: Optional[list[ToolCall]] = None
    tool_name: Optional[str] = None
    thinking: Optional[str] = None


Format = Union[str, dict[str, Any], None]


class _Generation(_Body):
    model: str = ""
    stream: Optional[bool] = True
    format: Format = None
    options: Optional[dict[str, Any]] = None
    keep_alive: Any = None  # accepted, ignored: the model stays loaded
    think: Any = None

    @field_validator("format")
    @classmethod
    def _format(cls, value: Format) -> Format:
        if isinstance(value, str) and value not in ("", "json"):
            raise ValueError('invalid format: expected "json" or a JSON schema object')
        return value


class ChatRequest(_Generation):
    messages: Optional[list[Message]] = None
    tools: Optional[list[dict[str, Any]]] = None


class GenerateRequest(_Generation):
    prompt: Optional[str] = ""
    suffix: Optional[str] = None
    system: Optional[str] = None
    template: Optional[str] = None  # accepted, ignored
    context: Optional[list[int]] = None
    raw: bool = False
    images: Optional[list[Any]] = None


class EmbedRequest(_Body):
    model: str = ""
    input: Union[str, list[str]] = ""
    truncate: Optional[bool] = True
    dimensions: Optional[int] = Field(None, ge=1)
    options: Optional[dict[str, Any]] = None
    keep_alive: Any = None


class EmbeddingsRequest(_Body):
    model: str = ""
    prompt: str = ""
    options: Optional[dict[str, Any]] = None
    keep_alive: Any = None


class ShowRequest(_Body):
    model: str = Field("", validation_alias=AliasChoices("model", "name"))
    verbose: bool = False
