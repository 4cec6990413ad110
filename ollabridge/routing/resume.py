"""Mid-stream resume, the pure part: what a stream has sent its caller, the request that continues
it on another backend, and how that backend's chunks join the same stream.

Data in, data out; `serve.py` does the waiting, leasing and timing.

- `Transcript.take(chunk)` (`final` for the last) is the chunk the caller gets for one chunk of the
  backend serving now, and remembers what it carried (text, thinking, tool calls).
- `Transcript.lost(...)` marks the serving backend lost; its tokens and durations are carried into
  the final chunk of the backend that finishes.
- `Transcript.continuation(body)` is the request for that backend: the original body with what was
  streamed so far appended as a trailing assistant message (Ollama continues a trailing assistant
  message): its content, its thinking, its tool calls (already sent, so never sent again). A
  caller's own trailing assistant message (a prefill) is extended instead.

`/api/generate` has no assistant message. Its continuation is the closest equivalent, an
`/api/chat` whose messages are what generate renders through the model's template (the system
prompt, the prompt as the user's message with its images) plus the trailing assistant message; its
chat chunks go back to the caller as generate chunks (`response`, `thinking`). With `raw: true` (no
template) or a `suffix` (fill-in-the-middle: the prefix grows by the middle written so far) it is
an `/api/generate` whose prompt has the text streamed so far appended. Not continued (the stream
ends with its error event as before): a custom `template` or a `context` (neither can be
rendered here), and a `format` (the grammar would start over on a partial JSON).

The final chunk counts the whole answer: `eval_count` sums every backend's output tokens (a lost
backend's are the outputs it streamed, one token each as Ollama streams them), and `eval_duration`
/ `total_duration` add the time the lost backends streamed until each was given up;
`prompt_eval_count` is the finishing backend's (a lost backend never reports its own).
"""

from __future__ import annotations

from typing import Any

# The fields of an /api/generate body that mean the same in an /api/chat body.
_CHAT_FIELDS = ("model", "options", "think", "keep_alive", "stream", "logprobs", "top_logprobs")
_CARRIED = ("eval_count", "eval_duration", "total_duration")


class Transcript:
    """What one stream (`op`: "chat" or "generate") has sent its caller, across the backends that
    served it. `segment` is the op the backend serving now was sent.

    `take` runs for every chunk: on the first backend it only keeps the text (a list append), the
    rest is for continuations and the rare chunk with thinking or tool calls."""

    __slots__ = ("op", "segment", "content", "thinking", "tool_calls", "started", "resumes", "carried",
                 "_mark", "_sent_calls")

    def __init__(self, op: str) -> None:
        self.op = op
        self.segment = op
        self.content: list[str] = []  # chat message.content / generate response, in order
        self.thinking: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.started = False  # whether anything reached the caller
        self.resumes = 0
        self.carried = dict.fromkeys(_CARRIED, 0)  # from backends lost mid-answer
        self._mark = 0  # outputs kept before the backend serving now began
        self._sent_calls: list[Any] = []  # (name, arguments) of every tool call sent, to drop repeats

    # -- the stream ------------------------------------------------------------------------
    def take(self, chunk: dict[str, Any]) -> dict[str, Any]:
        """The chunk the caller gets for `chunk` (not the last) from the backend serving now."""
        self.started = True
        if self.resumes:
            return self._spliced(chunk)
        if self.op == "chat":
            message = chunk.get("message")
            if message:
                text = message.get("content")
                if text:
                    self.content.append(text)
                if "thinking" in message or "tool_calls" in message:
                    self._keep(message.get("thinking"), message.get("tool_calls"))
        else:
            text = chunk.get("response")
            if text:
                self.content.append(text)
            if "thinking" in chunk:
                self._keep(chunk.get("thinking"), None)
        return chunk

    def final(self, chunk: dict[str, Any]) -> dict[str, Any]:
        """The caller's last chunk for the last chunk of the backend serving now: after a resume,
        with the lost backends' tokens and times added."""
        chunk = self.take(chunk)
        if self.resumes:
            chunk = {**chunk, **{k: _int(chunk.get(k)) + self.carried[k] for k in _CARRIED}}
        return chunk

    def _spliced(self, chunk: dict[str, Any]) -> dict[str, Any]:
        """A continuation's chunk: as generate when the caller asked generate, without the tool
        calls already sent."""
        if self.segment != self.op:
            chunk = _as_generate(chunk)
        if self.op == "generate":
            text, thinking, calls = chunk.get("response"), chunk.get("thinking"), None
        else:
            message = chunk.get("message") or {}
            text, thinking, calls = message.get("content"), message.get("thinking"), message.get("tool_calls")
            if calls:
                kept = [c for c in calls if _call_key(c) not in self._sent_calls]
                if len(kept) != len(calls):  # a continuation repeating a call already sent
                    message = {**message, "tool_calls": kept}
                    if not kept:
                        del message["tool_calls"]
                    chunk = {**chunk, "message": message}
                    calls = kept
        if text:
            self.content.append(text)
        self._keep(thinking, calls)
        return chunk

    def _keep(self, thinking: Any, calls: Any) -> None:
        if thinking:
            self.thinking.append(thinking)
        if calls:
            self.tool_calls.extend(calls)
            self._sent_calls.extend(_call_key(c) for c in calls)

    @property
    def tokens(self) -> int:
        """Outputs (pieces of text, of thinking, tool calls) from the backend serving now: the tokens
        it made, as Ollama streams one token per chunk."""
        return len(self.content) + len(self.thinking) + len(self.tool_calls) - self._mark

    def lost(self, total_ns: int, eval_ns: int) -> None:
        """The backend serving now was lost `total_ns` after its request, having streamed for
        `eval_ns` (first chunk until it was given up): carry its tokens and times into the final chunk."""
        self.carried["eval_count"] += self.tokens
        self.carried["eval_duration"] += eval_ns
        self.carried["total_duration"] += total_ns
        self._mark += self.tokens

    @property
    def output_tokens(self) -> int:
        return self.carried["eval_count"] + self.tokens

    # -- the continuation ------------------------------------------------------------------------
    def continuation(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """(op, body) that continues the answer from where the caller's stream stands, or None when
        it cannot be continued. Call after `lost`; `body` is the stream's original request."""
        options = body.get("options")
        if isinstance(options, dict) and isinstance(options.get("num_predict"), int) and options["num_predict"] > 0:
            options = {**options, "num_predict": options["num_predict"] - self.output_tokens}
            if options["num_predict"] <= 0:
                return None  # see `exhausted`
        if body.get("format"):
            return None
        text, thinking = "".join(self.content), "".join(self.thinking)
        if self.op == "generate":
            if body.get("template") or body.get("context"):
                return None
            if body.get("raw") or body.get("suffix"):
                return "generate", _with_options({**body, "prompt": (body.get("prompt") or "") + text}, options)
            messages: list[dict[str, Any]] = []
            if body.get("system"):
                messages.append({"role": "system", "content": body["system"]})
            user: dict[str, Any] = {"role": "user", "content": body.get("prompt") or ""}
            if body.get("images"):
                user["images"] = body["images"]
            messages.append(user)
            messages.append(_assistant({"role": "assistant", "content": ""}, text, thinking, []))
            chat = {k: body[k] for k in _CHAT_FIELDS if k in body}
            return "chat", _with_options({**chat, "messages": messages}, options)
        messages = list(body.get("messages") or [])
        last = messages[-1] if messages and isinstance(messages[-1], dict) else None
        if last is not None and last.get("role") == "assistant":  # the caller's prefill, continued
            messages[-1] = _assistant(last, text, thinking, self.tool_calls)
        else:
            messages.append(_assistant({"role": "assistant", "content": ""}, text, thinking, self.tool_calls))
        return "chat", _with_options({**body, "messages": messages}, options)

    def exhausted(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The final chunk of an answer that was lost exactly at its `num_predict` (a stream that
        had not failed would have ended there: done_reason "length"), else None."""
        options = body.get("options")
        if not (isinstance(options, dict) and isinstance(options.get("num_predict"), int)
                and 0 < options["num_predict"] <= self.output_tokens):
            return None
        final: dict[str, Any] = {"model": body.get("model", ""), "done": True, "done_reason": "length",
                                 **self.carried}
        final.update({"response": ""} if self.op == "generate" else
                     {"message": {"role": "assistant", "content": ""}})
        return final

    def next_segment(self, op: str) -> None:
        """A continuation (sent as `op`) starts on another backend."""
        self.segment = op
        self.resumes += 1


def _assistant(message: dict[str, Any], text: str, thinking: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    out = {**message, "content": (message.get("content") or "") + text}
    if thinking:
        out["thinking"] = (message.get("thinking") or "") + thinking
    if calls:
        out["tool_calls"] = [*(message.get("tool_calls") or []), *calls]
    return out


def _with_options(body: dict[str, Any], options: Any) -> dict[str, Any]:
    if options is not None:
        body["options"] = options
    return body


def _as_generate(chunk: dict[str, Any]) -> dict[str, Any]:
    """An /api/chat chunk as the /api/generate chunk that says the same."""
    message = chunk.get("message") or {}
    out = {k: v for k, v in chunk.items() if k != "message"}
    out["response"] = message.get("content") or ""
    if message.get("thinking"):
        out["thinking"] = message["thinking"]
    return out


def _call_key(call: Any) -> Any:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict):
        return repr(call)
    return (fn.get("name"), repr(fn.get("arguments")))


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
