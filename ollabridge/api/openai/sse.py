"""OpenAI's chat stream on the wire: `data:` events of `chat.completion.chunk`s, then `[DONE]`."""

from __future__ import annotations

from typing import Any

from ollabridge.api.errors import sse_error_event
from ollabridge.api.openai.convert import StreamTranslator
from ollabridge.api.streaming import DONE, SSEEncoder
from ollabridge.errors import GatewayError
from ollabridge.jsonwire import dumps


class ChatSSE(SSEEncoder):
    def __init__(self, translator: StreamTranslator) -> None:
        self.translator = translator

    def encode(self, chunk: dict[str, Any]) -> bytes:
        return b"".join(b"data: " + dumps(event) + b"\n\n" for event in self.translator.translate(chunk))

    def end(self) -> bytes:
        return DONE

    def error(self, err: GatewayError) -> bytes:
        return sse_error_event(err.message, err.type, err.code) + DONE
