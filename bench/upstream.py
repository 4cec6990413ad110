"""A fast scripted Ollama-API upstream for the benchmarks: the physical limit every figure is measured against.

Raw asyncio protocol, no framework, every reply pre-encoded, so that the upstream costs as little
as possible and the time measured through a proxy is the proxy's. It answers:

* ``POST /api/chat``: with ``stream`` true (Ollama's default) an NDJSON stream of the model's
  script, chunked transfer encoding; with ``stream: false`` one JSON object with the whole reply;
* ``GET /api/tags``, ``GET /api/version``, ``GET /api/ps``, ``POST /api/show``.

Each model is a script ``NAME=CHUNKS@RATE``: CHUNKS content chunks (then the ``done`` object, sent
with the last one), RATE chunks per second (0: all at once, the instant reply). The defaults:

* ``fast``  16 chunks, instant (added latency, throughput, time to first token);
* ``burst`` 2000 chunks, instant (how many chunks/s a stream can carry);
* ``rate``  500 chunks at 500/s (a fast real model: chunks/s kept vs direct);
* ``drip``  100 chunks at 20/s (the 1,000 concurrent streams).

    python bench/upstream.py --port 11500 [--script drip=40@20 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys

try:  # the stand-in upstream must cost little next to what it measures: uvloop when installed
    from uvloop import run as _run
except ImportError:  # pragma: no cover
    _run = asyncio.run

CREATED_AT = "2026-01-01T00:00:00.000000Z"
DEFAULT_SCRIPTS = {"fast": (16, 0.0), "burst": (2000, 0.0), "rate": (500, 500.0), "drip": (100, 20.0)}


class Script:
    """One model's reply, every byte encoded once at start."""

    def __init__(self, name: str, chunks: int, rate: float) -> None:
        self.name, self.chunks, self.rate = name, chunks, rate
        words = [f"w{i} " for i in range(chunks)]
        done = {"model": name, "created_at": CREATED_AT, "message": {"role": "assistant", "content": ""},
                "done_reason": "stop", "done": True, "total_duration": 1000000, "load_duration": 1000,
                "prompt_eval_count": 8, "prompt_eval_duration": 1000, "eval_count": chunks,
                "eval_duration": 1000000}
        lines = [json.dumps({"model": name, "created_at": CREATED_AT,
                             "message": {"role": "assistant", "content": w}, "done": False},
                            separators=(",", ":")).encode() + b"\n" for w in words]
        # The done object travels with the last content chunk, as a real server sends it right after.
        lines[-1] += json.dumps(done, separators=(",", ":")).encode() + b"\n"
        self.frames = [b"%x\r\n%s\r\n" % (len(line), line) for line in lines]
        self.all_frames = b"".join(self.frames)
        whole = {**done, "message": {"role": "assistant", "content": "".join(words)}}
        self.whole = json.dumps(whole, separators=(",", ":")).encode()


def _response(status: str, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return (b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")
END = b"0\r\n\r\n"


class Upstream(asyncio.Protocol):
    scripts: dict[str, Script] = {}
    static: dict[bytes, bytes] = {}

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a paced stream is being written; pipelined requests wait
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def connection_lost(self, exc) -> None:
        if self.timer:
            self.timer.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while not self.busy:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            method, path = head.split(b" ", 2)[:2]
            self.handle(method, path, body)

    def handle(self, method: bytes, path: bytes, body: bytes) -> None:
        assert self.transport is not None
        if path == b"/api/chat" and method == b"POST":
            try:
                req = json.loads(body)
            except ValueError:
                self.transport.write(_response("400 Bad Request", b'{"error":"bad json"}'))
                return
            name = str(req.get("model", "")).removesuffix(":latest")
            script = self.scripts.get(name)
            if script is None:
                self.transport.write(_response("404 Not Found",
                                               json.dumps({"error": f"model '{name}' not found"}).encode()))
                return
            if req.get("stream", True) is False:
                self.transport.write(_response("200 OK", script.whole))
            elif script.rate <= 0:
                self.transport.write(STREAM_HEAD + script.all_frames + END)
            else:
                self.transport.write(STREAM_HEAD + script.frames[0])
                if len(script.frames) == 1:
                    self.transport.write(END)
                    return
                self.busy = True
                loop = asyncio.get_running_loop()
                self._pace(script, 1, loop.time(), loop)
            return
        reply = self.static.get(path.split(b"?")[0])
        if reply is None:
            print(f"upstream: no route {method.decode()} {path.decode()}", file=sys.stderr, flush=True)
            reply = _response("404 Not Found", b'{"error":"not found"}')
        self.transport.write(reply)

    def _pace(self, script: Script, index: int, t0: float, loop: asyncio.AbstractEventLoop) -> None:
        # Absolute schedule t0 + i/rate: no drift however late a timer fires.
        self.timer = loop.call_at(t0 + index / script.rate, self._tick, script, index, t0, loop)

    def _tick(self, script: Script, index: int, t0: float, loop: asyncio.AbstractEventLoop) -> None:
        self.timer = None
        if self.transport is None:
            return
        self.transport.write(script.frames[index])
        if index + 1 < len(script.frames):
            self._pace(script, index + 1, t0, loop)
        else:
            self.transport.write(END)
            self.busy = False
            if self.buf:
                self.data_received(b"")


def build_static(scripts: dict[str, Script]) -> dict[bytes, bytes]:
    models = [{"name": f"{n}:latest", "model": f"{n}:latest", "modified_at": CREATED_AT, "size": 1,
               "digest": "0" * 64, "details": {"format": "gguf", "family": "bench", "parameter_size": "1B",
                                               "quantization_level": "Q4_K_M"}} for n in scripts]
    show = {"modelfile": "", "parameters": "", "template": "{{ .Prompt }}", "details": models[0]["details"],
            "model_info": {"general.architecture": "bench"}, "capabilities": ["completion"]}
    return {b"/api/tags": _response("200 OK", json.dumps({"models": models}).encode()),
            b"/api/version": _response("200 OK", b'{"version":"0.0.0-bench"}'),
            b"/api/ps": _response("200 OK", b'{"models":[]}'),
            b"/api/show": _response("200 OK", json.dumps(show).encode()),
            b"/": _response("200 OK", b"Ollama is running", b"text/plain")}


def parse_scripts(specs: list[str]) -> dict[str, Script]:
    table = dict(DEFAULT_SCRIPTS)
    for spec in specs:
        name, _, rest = spec.partition("=")
        chunks, _, rate = rest.partition("@")
        table[name] = (int(chunks), float(rate or 0))
    return {name: Script(name, c, r) for name, (c, r) in table.items()}


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, host, port, backlog=4096, reuse_address=True)
    print(f"upstream: serving on {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11500)
    parser.add_argument("--script", action="append", default=[], help="NAME=CHUNKS@RATE (rate 0: instant)")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    Upstream.scripts = parse_scripts(args.script)
    Upstream.static = build_static(Upstream.scripts)
    try:
        _run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
