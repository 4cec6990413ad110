"""Ollama native request shapes the gateway checks before forwarding them as sent."""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Native(BaseModel):
    """Unknown fields pass through untouched: the backend is the judge of them."""

    model_config = ConfigDict(extra="allow")


class NativeMessage(_Native):
    role: str
    content: Optional[str] = ""
    images: Optional[list[str]] = None
    tool_calls: Optional[list[dict[str, Any]]] = None


class NativeChatRequest(_Native):
    model: str = Field(..., min_length=1)
    messages: list[NativeMessage] = []
    stream: bool = True
    format: Optional[Union[str, dict[str, Any]]] = None
    options: Optional[dict[str, Any]] = None
    tools: Optional[list[dict[str, Any]]] = None
    keep_alive: Optional[Union[str, int, float]] = None


class NativeGenerateRequest(_Native):
    model: str = Field(..., min_length=1)
    prompt: Optional[str] = None
    suffix: Optional[str] = None
    system: Optional[str] = None
    template: Optional[str] = None
    raw: Optional[bool] = None
    images: Optional[list[str]] = None
    stream: bool = True
    format: Optional[Union[str, dict[str, Any]]] = None
    options: Optional[dict[str, Any]] = None
    think: Optional[Union[bool, str]] = None
    keep_alive: Optional[Union[str, int, float]] = None
    context: Optional[list[int]] = None


class NativeEmbedRequest(_Native):
    model: str = Field(..., min_length=1)
    input: Union[str, list[str]]


class NativeEmbeddingsRequest(_Native):
    model: str = Field(..., min_length=1)
    prompt: str


class NativeShowRequest(_Native):
    model: Optional[str] = None
    name: Optional[str] = None  # older clients send `name`


class NativeError(BaseModel):
    error: str


class NativeVersion(BaseModel):
    version: str
