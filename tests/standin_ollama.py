"""A stand-in `ollama` executable for the start.sh tests (stdlib only; never a real model).

`ollama serve` serves a small slice of the Ollama API on $OLLAMA_HOST and logs every call, one JSON
object a line, to $STANDIN_LOG:

* `/api/version`, `/api/tags`, `/api/ps`, `/api/show`, `/api/chat` (streamed or not; replies
  "hello from <model>").
* `/api/pull` streams progress like Ollama: "pulling manifest", one layer 0% -> 50%, then it holds
  until the test posts `/_standin/release` (so the test can see the progress in /health), then 100%,
  "verifying sha256 digest", "writing manifest", "success"; the model then shows in /api/tags.
  Models named in $STANDIN_FAIL fail with Ollama's error line instead.
* $STANDIN_MODELS: models present from the start (comma-separated).
* $STANDIN_MODE=die: `serve` exits with code 3 at once; =hang: it runs but never answers.

Any other subcommand is logged and exits 0. SIGTERM is logged, then the server stops.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG = os.environ.get("STANDIN_LOG", "/dev/null")
LAYER = 1_000_000_000
_lock = threading.Lock()
_release = threading.Event()
_models = [m for m in os.environ.get("STANDIN_MODELS", "").split(",") if m]
_fail = {m for m in os.environ.get("STANDIN_FAIL", "").split(",") if m}


def log(event: str, **fields) -> None:
    with _lock, open(LOG, "a") as f:
        f.write(json.dumps({"t": time.time(), "event": event, **fields}) + "\n")


def _tag(name: str) -> dict:
    return {"name": name, "model": name, "modified_at": "2026-01-01T00:00:00Z", "size": LAYER,
            "digest": "0" * 64, "details": {"format": "gguf", "family": "standin", "parameter_size": "1B",
                                             "quantization_level": "Q4_K_M"}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _json(self, status: int, data: dict) -> None:
        raw = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _stream_start(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _line(self, data: dict) -> None:
        raw = json.dumps(data).encode() + b"\n"
        self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
        self.wfile.flush()

    def _end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}") if n else {}

    def do_GET(self) -> None:  # noqa: N802
        log("GET " + self.path, ua=self.headers.get("User-Agent", ""))
        if self.path == "/api/version":
            self._json(200, {"version": "0.0.0-standin"})
        elif self.path == "/api/tags":
            self._json(200, {"models": [_tag(m) for m in list(_models)]})
        elif self.path == "/api/ps":
            self._json(200, {"models": []})
        else:
            self._json(404, {"error": "not found"})

    def do_HEAD(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:  # noqa: N802
        body = self._body()
        model = body.get("model") or body.get("name") or ""
        log("POST " + self.path, model=model, ua=self.headers.get("User-Agent", ""))
        if self.path == "/_standin/release":
            _release.set()
            self._json(200, {"released": True})
        elif self.path == "/api/pull":
            self._pull(model)
        elif self.path == "/api/chat":
            self._chat(model, body)
        elif self.path == "/api/show":
            if model in _models:
                self._json(200, {"details": _tag(model)["details"], "model_info": {}, "template": ""})
            else:
                self._json(404, {"error": f"model '{model}' not found"})
        else:
            self._json(404, {"error": "not found"})

    def _pull(self, model: str) -> None:
        self._stream_start()
        self._line({"status": "pulling manifest"})
        if model in _fail:
            self._line({"error": "pull model manifest: file does not exist"})
            self._end()
            log("pull failed", model=model)
            return
        digest = "sha256:" + "ab" * 32
        self._line({"status": f"pulling {digest[7:19]}", "digest": digest, "total": LAYER, "completed": 0})
        self._line({"status": f"pulling {digest[7:19]}", "digest": digest, "total": LAYER,
                    "completed": LAYER // 2})
        log("pull holding", model=model)
        released = _release.wait(60)
        if not released:  # never hang a test run: fail instead
            self._line({"error": "stand-in: the test never released the pull"})
            self._end()
            return
        self._line({"status": f"pulling {digest[7:19]}", "digest": digest, "total": LAYER, "completed": LAYER})
        for status in ("verifying sha256 digest", "writing manifest", "success"):
            self._line({"status": status})
        if model not in _models:
            _models.append(model)
        self._end()
        log("pull done", model=model)

    def _chat(self, model: str, body: dict) -> None:
        if model not in _models:
            self._json(404, {"error": f"model '{model}' not found, try pulling it first"})
            return
        msg = {"role": "assistant", "content": f"hello from {model}"}
        final = {"model": model, "created_at": "2026-01-01T00:00:00Z", "message": {"role": "assistant", "content": ""},
                 "done": True, "done_reason": "stop", "prompt_eval_count": 3, "eval_count": 3,
                 "total_duration": 1000, "eval_duration": 500, "prompt_eval_duration": 100}
        if body.get("stream") is False:
            self._json(200, {**final, "message": msg})
            return
        self._stream_start()
        self._line({"model": model, "created_at": "2026-01-01T00:00:00Z", "message": msg, "done": False})
        self._line(final)
        self._end()


def serve() -> int:
    if os.environ.get("STANDIN_MODE") == "die":
        log("serve dying")
        print("Error: stand-in told to die", file=sys.stderr)
        return 3
    if os.environ.get("STANDIN_MODE") == "hang":  # runs, never answers, stops on SIGTERM
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: (log("sigterm"), stop.set()))
        log("serve hanging")
        while not stop.wait(0.1):
            pass
        return 0
    host, _, port = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434").rpartition(":")
    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
    server.daemon_threads = True

    def on_term(signum, frame):
        log("sigterm")
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    log("serve listening", host=host, port=int(port))
    server.serve_forever(poll_interval=0.05)
    log("serve stopped")
    return 0


def main(argv: list[str]) -> int:
    log("exec", argv=argv)
    if argv[:1] == ["serve"]:
        return serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
