"""Ollama `options`/`format` -> llama.cpp sampling, plus the stop-sequence/UTF-8 text stream.

Pure helpers: nothing here loads a model. Defaults follow Ollama's (temperature 0.8, top_k 40,
top_p 0.9, min_p 0, repeat_penalty 1.1 over the last 64 tokens). `num_predict`: > 0 is a hard
limit; unset/-1/0 means the engine's default cap (see `Runner`); -2 means "until the context is full".
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass, field
from typing import Any

FILL_CONTEXT = -2


@dataclass
class Sampling:
    """Per-request sampling settings in llama-cpp-python's terms."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    num_predict: int | None = None


_FLOATS = ("temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty",
           "frequency_penalty")
_INTS = ("top_k", "repeat_last_n", "seed", "num_predict")


def sampling_from_options(options: dict[str, Any] | None) -> Sampling:
    """Build `Sampling` from an Ollama `options` object; unknown keys (num_ctx, num_gpu, ...) are ignored.

    Raises ValueError for values of the wrong type, which the server turns into a 400.
    """
    s = Sampling()
    for key, value in (options or {}).items():
        if value is None:
            continue
        try:
            if key in _FLOATS:
                setattr(s, key, float(value))
            elif key in _INTS:
                if isinstance(value, bool) or float(value) != int(value):
                    raise ValueError
                setattr(s, key, int(value))
            elif key == "stop":
                stops = [value] if isinstance(value, str) else list(value)
                if not all(isinstance(x, str) for x in stops):
                    raise ValueError
                s.stop = [x for x in stops if x]
        except (TypeError, ValueError):
            raise ValueError(f"option {key!r}: invalid value {value!r}") from None
    if s.seed is not None and s.seed < 0:
        s.seed = None  # Ollama treats a negative seed as "random"
    return s


def grammar_for_format(fmt: Any) -> str | None:
    """GBNF text for Ollama's `format`: "json" -> any JSON object, a dict -> that JSON schema.

    Raises ValueError when the format is neither (or the schema cannot be turned into a grammar).
    """
    if fmt is None or fmt == "":
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if fmt == "json":
        return JSON_GBNF
    if isinstance(fmt, dict):
        try:
            return json_schema_to_gbnf(json.dumps(fmt))
        except Exception as exc:  # the converter asserts/raises on unsupported schemas
            raise ValueError(f"invalid format: unsupported JSON schema ({exc})") from None
    raise ValueError('invalid format: expected "json" or a JSON schema object')


class TextStream:
    """Turn detokenized byte pieces into text: completes UTF-8 across tokens, cuts at stop strings.

    Text that could be the start of a stop string is held back until it is clear that it is not.
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # decoded but not yet released
        self.stopped = False

    def feed(self, piece: bytes) -> str:
        """Add a token's bytes; return the text that is safe to send now. Sets `stopped` on a stop string."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(piece)
        cut = min((i for i in (self._pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._pending = self._pending[:cut], ""
            return out
        hold = self._held_back()
        out = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(out):]
        return out

    def flush(self) -> str:
        """Release whatever is held back (generation ended without a stop string)."""
        if self.stopped:
            return ""
        out = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        return out

    def _held_back(self) -> int:
        text, best = self._pending, 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
