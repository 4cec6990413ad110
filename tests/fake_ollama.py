"""A scripted Ollama-API server for tests: deterministic chunks, delays, hangs and deaths.

    python -m tests.fake_ollama --port N --models a,b [--chunks N --delay S --die-after K --hang --version V]

Serves `/api/version`, `/api/tags`, `/api/ps`, `/api/chat` (NDJSON or one object), `/api/embed`,
`/api/embeddings`, `/api/show`. A chat streams `chunks` content chunks ("tok0 ", "tok1 ", ...)
`delay` seconds apart, then a `done` object with `eval_count`; `options.num_predict` in the
request overrides `chunks`. A chat with `tools` whose last message is not a tool result calls the
first tool instead, always: one `tool_calls` message (in a stream its own chunk) whose arguments
give each required parameter a fixed value of its type (string "x", integer 1, number 1.5, boolean
true). `/api/generate` streams the same tokens as `response` pieces (its last object has a
`context`); `prompt: ""` with `keep_alive: 0` unloads. `think` on a model whose name has no "think"
in it is a 400 "does not support thinking", as Ollama answers; on one that has, a thinking chunk
comes first. `--hang` never answers a chat; `--die-after K` exits the process after K chunks of a
stream; `--cut-after K` drops the connection of every stream after its K-th chunk (the process
lives on); `--freeze-after K` stops sending after K chunks, the connection left open.

It continues answers deterministically, as Ollama continues a trailing assistant message: a chat
whose last message is the assistant's starts at "tok{K}", K being the number of "tokN " words in
that message's content (a generate: in its prompt), and without `num_predict` streams only the
rest of its `chunks`; a trailing assistant message with thinking gets no thinking chunk again, one
with tool calls nothing more (its answer was the call). So a stream resumed from a partial answer ends exactly as one
that never failed. Test hooks:

- `GET /_stats` -> `{active, max_active, started, completed, cancelled, chats, chunks}`: `cancelled`
  counts chats whose client went away before the end (what a relay `cancel` must cause).
- `POST /_control` `{models?: [names], chunks?, delay?, hang?, die_after?, cut_after?, freeze_after?}`
  changes the script.
- `GET /_last` -> `{chat?, generate?}`: the last body of each, as it reached this "Ollama".
- `GET /_bodies` -> `{bodies: [{op, body}]}`: every chat and generate body in order (the newest 200;
  `POST /_control {"reset_bodies": true}` empties it), for clients that make several requests.
- `POST /_control {"tool_args": {...}}` gives tool calls these arguments instead of the example
  values, `{"tool": name}` calls that tool (when the chat has it) instead of the first, and
  `{"call_tools": false}` answers chats with tools in text, as a model that uses none.

`/api/ps` lists the models that answered a chat or generate in the last 5 minutes (what Ollama
keeps loaded), newest first, with `expires_at` 5 minutes after their last request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import time
from typing import Any

STATE: dict[str, Any] = {"models": ["fake:latest"], "chunks": 5, "delay": 0.0, "hang": False, "die_after": 0,
                         "tool_args": None, "call_tools": True, "tool": None, "version": "0.0.0-fake",
                         "cut_after": 0, "freeze_after": 0}
SCRIPT = ("models", "chunks", "delay", "hang", "die_after", "cut_after", "freeze_after", "tool_args",
          "call_tools", "tool")
TOK = re.compile(r"tok\d+ ")
LAST: dict[str, Any] = {}  # the last chat and generate bodies, for tests to see what reached "Ollama"
BODIES: list[dict[str, Any]] = []  # every chat and generate body, oldest first (the newest 200)
SERVED: dict[str, float] = {}  # model name -> time.time() of its last chat or generate (for /api/ps)
KEEP_ALIVE_S = 300.0
STATS = {"active": 0, "max_active": 0, "started": 0, "completed": 0, "cancelled": 0, "chats": 0, "chunks": 0}


def _model(name: str) -> dict[str, Any]:
    return {"name": name, "model": name, "modified_at": "2026-01-01T00:00:00Z", "size": 1000,
            "digest": "f" * 64, "details": {"format": "gguf", "family": "fake", "parameter_size": "1M",
                                            "quantization_level": "Q4_0"}}


def _known(name: str) -> bool:
    return name in STATE["models"] or f"{name}:latest" in STATE["models"]


def _loaded() -> list[dict[str, Any]]:
    """`/api/ps`: the models served in the last KEEP_ALIVE_S seconds, newest first."""
    now = time.time()
    out = []
    for name, at in sorted(SERVED.items(), key=lambda kv: -kv[1]):
        if now - at < KEEP_ALIVE_S and name in STATE["models"]:
            expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at + KEEP_ALIVE_S))
            out.append({**{k: v for k, v in _model(name).items() if k != "modified_at"}, "expires_at": expires,
                        "size_vram": 0, "context_length": 4096})
    return out


async def _read_body(receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return body
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def _json(send, status: int, obj: Any) -> None:
    raw = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]})
    await send({"type": "http.response.body", "body": raw})


def _chunk(model: str, i: int, op: str = "chat") -> dict[str, Any]:
    if op == "generate":
        return {"model": model, "created_at": "2026-01-01T00:00:00Z", "response": f"tok{i} ", "done": False}
    return {"model": model, "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": f"tok{i} "}, "done": False}


def _thinking(model: str, op: str) -> dict[str, Any]:
    if op == "generate":
        return {"model": model, "created_at": "2026-01-01T00:00:00Z", "response": "", "thinking": "hmm ", "done": False}
    return {"model": model, "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": "", "thinking": "hmm "}, "done": False}


EXAMPLE_VALUES = {"string": "x", "integer": 1, "number": 1.5, "boolean": True}


def _obj(value: Any) -> dict[str, Any]:  # fuzzers send anything
    return value if isinstance(value, dict) else {}


def _prefill(body: dict[str, Any], op: str) -> dict[str, Any]:
    """The trailing assistant message an answer continues ({} when there is none); for a generate,
    its prompt as the content."""
    if op == "generate":
        prompt = body.get("prompt")
        return {"content": prompt} if isinstance(prompt, str) else {}
    messages = body.get("messages")
    last = _obj(messages[-1]) if isinstance(messages, list) and messages else {}
    return last if last.get("role") == "assistant" else {}


def _tool_call(body: dict[str, Any]) -> dict[str, Any] | None:
    """The call a chat with tools gets (see the module's doc), or None."""
    obj = _obj
    tools, messages = body.get("tools"), body.get("messages")
    last = obj(messages[-1]) if isinstance(messages, list) and messages else {}
    if not tools or not isinstance(tools, list) or last.get("role") == "tool" or last.get("tool_calls") \
            or not STATE["call_tools"]:
        return None
    fn = obj(obj(tools[0]).get("function"))
    if isinstance(STATE["tool"], str):
        fn = next((f for f in (obj(obj(t).get("function")) for t in tools) if f.get("name") == STATE["tool"]), fn)
    params = obj(fn.get("parameters"))
    props = obj(params.get("properties"))
    required = params.get("required") if isinstance(params.get("required"), list) else []
    args = {name: EXAMPLE_VALUES.get(obj(props.get(name)).get("type"))
            for name in required if isinstance(name, str)}
    if isinstance(STATE["tool_args"], dict):
        args = dict(STATE["tool_args"])
    return {"function": {"name": fn.get("name") if isinstance(fn.get("name"), str) else "", "arguments": args}}


def _final(model: str, n: int, started: float, content: str = "", call: dict | None = None,
           op: str = "chat") -> dict[str, Any]:
    took = int((time.monotonic() - started) * 1e9) or 1
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if call is not None:
        message["tool_calls"] = [call]
    body: dict[str, Any] = {"response": content, "context": [1, 2, 3]} if op == "generate" else {"message": message}
    return {"model": model, "created_at": "2026-01-01T00:00:00Z", **body, "done": True, "done_reason": "stop",
            "total_duration": took, "load_duration": 1, "prompt_eval_count": 3, "prompt_eval_duration": 1,
            "eval_count": n, "eval_duration": took}


async def _chat(body: dict[str, Any], receive, send, op: str = "chat") -> None:
    model = body.get("model", "")
    LAST[op] = body
    BODIES.append({"op": op, "body": body})
    del BODIES[:-200]
    if not _known(model):
        await _json(send, 404, {"error": f"model '{model}' not found"})
        return
    thinks = bool(body.get("think")) and isinstance(model, str)
    if thinks and "think" not in model:  # as Ollama answers a model without the thinking capability
        await _json(send, 400, {"error": f'"{model}" does not support thinking'})
        return
    if op == "generate" and not body.get("prompt") and body.get("keep_alive") in (0, "0", "0s"):
        SERVED.pop(model if model in STATE["models"] else f"{model}:latest", None)
        await _json(send, 200, {"model": model, "created_at": "2026-01-01T00:00:00Z", "response": "", "done": True,
                                "done_reason": "unload"})
        return
    prefill = _prefill(body, op)
    content = prefill.get("content")
    start = len(TOK.findall(content)) if isinstance(content, str) else 0
    asked = (body.get("options") or {}).get("num_predict")
    n = int(asked) if asked else STATE["chunks"] - start
    n = 0 if prefill.get("tool_calls") else max(0 if prefill else 1, min(n, STATE.get("max_chunks") or 100000))
    thinks = thinks and not prefill.get("thinking")
    stream = body.get("stream", True)
    call = _tool_call(body) if op == "chat" else None
    STATS["chats"] += 1
    SERVED[model if model in STATE["models"] else f"{model}:latest"] = time.time()
    STATS["started"] += 1
    STATS["active"] += 1
    STATS["max_active"] = max(STATS["max_active"], STATS["active"])
    started = time.monotonic()
    ended = False

    def finish() -> None:
        """This generation is over once its last object goes out (not when the handler returns, a moment
        after the client has read it): what `active` and `max_active` count."""
        nonlocal ended
        if not ended:
            ended = True
            STATS["active"] -= 1

    async def generate() -> None:
        if STATE["hang"]:
            await asyncio.Event().wait()
        if not stream:
            await asyncio.sleep(STATE["delay"] * n)
            finish()
            if call is not None:
                await _json(send, 200, _final(model, 1, started, "", call))
                return
            content = "".join(f"tok{i} " for i in range(start, start + n))
            await _json(send, 200, _final(model, n, started, content, op=op))
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/x-ndjson")]})
        sent = 0

        async def line(chunk: dict[str, Any]) -> None:
            nonlocal sent
            await send({"type": "http.response.body", "body": json.dumps(chunk).encode() + b"\n", "more_body": True})
            sent += 1
            if STATE["die_after"] and sent >= STATE["die_after"]:
                os._exit(1)
            if STATE["cut_after"] and sent >= STATE["cut_after"]:
                raise ConnectionAbortedError("scripted cut")  # uvicorn drops the connection mid-body
            if STATE["freeze_after"] and sent >= STATE["freeze_after"]:
                await asyncio.Event().wait()

        if thinks:
            await line(_thinking(model, op))
        if call is not None:
            await line({**_chunk(model, 0), "message": {"role": "assistant", "content": "", "tool_calls": [call]}})
            finish()
            await send({"type": "http.response.body", "body": json.dumps(_final(model, 1, started)).encode() + b"\n",
                        "more_body": False})
            return
        for i in range(start, start + n):
            if STATE["delay"]:
                await asyncio.sleep(STATE["delay"])
            elif i % 64 == 63:
                # A send to a client that has gone returns at once: yield, so the disconnect is seen
                # and a cancelled 2M-chunk stream does not hold this server's loop for seconds.
                await asyncio.sleep(0)
            await line(_chunk(model, i, op))
            STATS["chunks"] += 1
        finish()
        await send({"type": "http.response.body", "body": json.dumps(_final(model, n, started, op=op)).encode() + b"\n",
                    "more_body": False})

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    gen = asyncio.create_task(generate())
    gone = asyncio.create_task(disconnected())
    try:
        done, _ = await asyncio.wait({gen, gone}, return_when=asyncio.FIRST_COMPLETED)
        if gen in done and gen.exception() is None:
            STATS["completed"] += 1
        else:
            STATS["cancelled"] += 1
    finally:
        finish()
        for task in (gen, gone):
            task.cancel()
        await asyncio.gather(gen, gone, return_exceptions=True)


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path, method = scope["path"], scope["method"]
    raw = await _read_body(receive) if method in ("POST", "PUT", "DELETE") else b""
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        await _json(send, 400, {"error": "invalid JSON"})
        return
    if path == "/api/version":
        await _json(send, 200, {"version": STATE["version"]})
    elif path == "/api/tags":
        await _json(send, 200, {"models": [_model(m) for m in STATE["models"]]})
    elif path == "/api/ps":
        await _json(send, 200, {"models": _loaded()})
    elif path in ("/api/chat", "/api/generate") and method == "POST":
        await _chat(body, receive, send, path.rsplit("/", 1)[1])
    elif path == "/_last":
        await _json(send, 200, LAST)
    elif path == "/_bodies":
        await _json(send, 200, {"bodies": BODIES})
    elif path in ("/api/embed", "/api/embeddings", "/api/show") and method == "POST":
        model = body.get("model") or body.get("name") or ""
        if not _known(model):
            await _json(send, 404, {"error": f"model '{model}' not found"})
        elif path == "/api/embed":
            inputs = body.get("input")
            inputs = [inputs] if isinstance(inputs, str) else inputs
            if not isinstance(inputs, list) or not all(isinstance(t, str) for t in inputs):
                await _json(send, 400, {"error": "invalid input type"})  # as Ollama answers token arrays
                return
            await _json(send, 200, {"model": model, "embeddings": [[0.1, 0.2, float(len(t))] for t in inputs]})
        elif path == "/api/embeddings":
            await _json(send, 200, {"embedding": [0.1, 0.2, float(len(body.get("prompt", "")))]})
        else:
            await _json(send, 200, {"modelfile": "# fake", "parameters": "", "template": "{{ .Prompt }}",
                                    "details": _model(model)["details"], "model_info": {}})
    elif path == "/_stats":
        await _json(send, 200, STATS)
    elif path == "/_control" and method == "POST":
        for key in SCRIPT:
            if key in body:
                STATE[key] = body[key]
        if body.get("reset_bodies"):
            BODIES.clear()
        if body.get("reset_stats"):
            for key in STATS:
                STATS[key] = 0 if key != "active" else STATS[key]
        await _json(send, 200, STATE)
    else:
        await _json(send, 404, {"error": f"{method} {path} not found"})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_ollama", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--models", default="fake:latest", help="comma-separated model names")
    parser.add_argument("--chunks", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between chunks")
    parser.add_argument("--die-after", type=int, default=0, help="exit the process after K chunks")
    parser.add_argument("--cut-after", type=int, default=0, help="drop each stream's connection after K chunks")
    parser.add_argument("--freeze-after", type=int, default=0, help="stop sending each stream after K chunks")
    parser.add_argument("--hang", action="store_true", help="never answer a chat")
    parser.add_argument("--version", default="0.0.0-fake", help="what /api/version reports")
    parser.add_argument("--max-chunks", type=int, default=100000, help="cap on num_predict (fuzzers send huge ones)")
    args = parser.parse_args(argv)
    STATE.update(models=[m.strip() for m in args.models.split(",") if m.strip()], chunks=args.chunks,
                 delay=args.delay, hang=args.hang, die_after=args.die_after, max_chunks=args.max_chunks,
                 version=args.version, cut_after=args.cut_after, freeze_after=args.freeze_after)
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
