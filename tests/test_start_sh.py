"""start.sh with a stand-in `ollama` on PATH (tests/standin_ollama.py): order, pulls, signals, failures."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.procs import ROOT, free_port, wait_http, wait_until

START = ROOT / "start.sh"


def make_bin(tmp: Path) -> Path:
    """A PATH folder whose `ollama` runs the stand-in with this interpreter."""
    bindir = tmp / "bin"
    bindir.mkdir()
    exe = bindir / "ollama"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{ROOT / "tests" / "standin_ollama.py"}" "$@"\n')
    exe.chmod(0o755)
    return bindir


class Run:
    """start.sh as a process: its own session, output in a log file."""

    def __init__(self, tmp: Path, *, with_ollama: bool = True, **env: str) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.ollama_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.calls = tmp / "ollama-calls.jsonl"
        self.out = tmp / "start.log"
        path = os.environ["PATH"]
        if with_ollama:
            path = f"{make_bin(tmp)}:{path}"
        full = {k: v for k, v in os.environ.items() if k not in ("OLLAMA_BASE_URL", "OLLAMA_HOST")}
        full.update({"PATH": path, "PYTHON": sys.executable, "HOST": "127.0.0.1", "PORT": str(self.port),
                     "OLLAMA_HOST": f"127.0.0.1:{self.ollama_port}", "OLLABRIDGE_UI": "0",
                     "GRADIO_ANALYTICS_ENABLED": "False", "OLLABRIDGE_DATA_DIR": str(tmp / "data"),
                     "OLLABRIDGE_ADMIN_TOKEN": "test-admin-token", "OLLABRIDGE_MODELS_TTL": "0.2",
                     "STANDIN_LOG": str(self.calls), "OLLABRIDGE_OLLAMA_WAIT": "20", **env})
        self.log_file = open(self.out, "ab")
        self.proc = subprocess.Popen([str(START)], env=full, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def events(self) -> list[dict]:
        if not self.calls.exists():
            return []
        return [json.loads(line) for line in self.calls.read_text().splitlines() if line.strip()]

    def first(self, pred) -> dict:
        for event in self.events():
            if pred(event):
                return event
        raise AssertionError(f"no such call in {self.events()}")

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"start.sh still running after {timeout}s\n{self.output()[-3000:]}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        else:  # leave no stray child behind (the stand-in, the gateway)
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log_file.close()


@pytest.fixture
def runs(tmp_path: Path):
    made: list[Run] = []

    def make(**kw) -> Run:
        sub = tmp_path / f"run{len(made)}"
        sub.mkdir()
        run = Run(sub, **kw)
        made.append(run)
        return run

    yield make
    for run in made:
        run.close()


def pulls_of(url: str) -> dict[str, dict]:
    data = httpx.get(f"{url}/health", timeout=5).json()
    return {p["model"]: p for p in data["pulls"]["models"]}


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_start_sh_is_executable_and_parses():
    assert os.access(START, os.X_OK)
    subprocess.run(["bash", "-n", str(START)], check=True)


def test_serve_ready_app_pulls_and_sigterm(runs):
    run = runs(OLLABRIDGE_MODELS="bad:1b,tiny:1b,good:1b", STANDIN_MODELS="tiny:1b", STANDIN_FAIL="bad:1b")
    wait_http(f"{run.url}/health", run.proc, 60, run.out)
    app_up = time.time()

    # Progress is visible while the pull is held at 50%; the failed pull is reported beside it.
    pulls = wait_until(lambda: (p := pulls_of(run.url)) and p["good:1b"]["state"] == "pulling"
                       and p["good:1b"]["percent"] == 50.0 and p["bad:1b"]["state"] == "failed" and p,
                       20, "good:1b at 50% and bad:1b failed")
    assert "file does not exist" in pulls["bad:1b"]["error"]
    assert pulls["tiny:1b"]["state"] == "present"
    assert pulls["good:1b"]["total"] == 1_000_000_000
    status = httpx.get(f"{run.url}/ollama/status", timeout=5).json()
    assert {p["model"]: p["state"] for p in status["pulls"]["models"]}["good:1b"] == "pulling"

    # The gateway serves the model already present meanwhile.
    reply = httpx.post(f"{run.url}/ollama/v1/chat/completions", timeout=10,
                       json={"model": "tiny:1b", "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == "hello from tiny:1b"

    # Order: ollama serve -> ready (start.sh's own probe) -> the gateway -> pulls -> ... app up -> pull done.
    events = run.events()
    serve = run.first(lambda e: e["event"] == "exec" and e["argv"] == ["serve"])
    ready = run.first(lambda e: e["event"] == "GET /api/version" and "urllib" in e["ua"])
    gateway = run.first(lambda e: "httpx" in e.get("ua", ""))
    first_pull = run.first(lambda e: e["event"] == "POST /api/pull")
    assert serve["t"] < ready["t"] < gateway["t"] <= first_pull["t"], events
    out = run.output()  # the gateway pulls once it answers: uvicorn is up before the first pull
    assert out.index("start.sh: Ollama answers at") < out.index("Uvicorn running on") \
        < out.index("pulling model bad:1b")
    assert not any(e["event"] == "pull done" for e in run.events())  # the app answered mid-pull

    httpx.post(f"http://127.0.0.1:{run.ollama_port}/_standin/release", timeout=5)
    wait_until(lambda: pulls_of(run.url)["good:1b"]["state"] == "done", 20, "good:1b done")
    done = run.first(lambda e: e["event"] == "pull done")
    assert app_up < done["t"]
    models = wait_until(lambda: "good:1b" in (ids := [m["id"] for m in httpx.get(
        f"{run.url}/ollama/v1/models", timeout=5).json()["data"]]) and ids, 20, "good:1b listed")
    assert "tiny:1b" in models
    assert pulls_of(run.url)["good:1b"]["percent"] == 100.0

    out = run.output()
    assert "start.sh: Ollama answers at" in out
    assert "pull bad:1b failed: pull model manifest: file does not exist" in out
    assert "pull good:1b done" in out

    # SIGTERM to start.sh alone stops the gateway, then Ollama, and exits 0.
    os.kill(run.proc.pid, signal.SIGTERM)
    assert run.wait(30) == 0, run.output()[-3000:]
    assert any(e["event"] == "sigterm" for e in run.events())
    assert not listening(run.port) and not listening(run.ollama_port)
    assert "start.sh: stopped" in run.output()


def test_ollama_dies_at_start(runs):
    run = runs(STANDIN_MODE="die")
    assert run.wait(30) == 1
    assert "'ollama serve' exited with code 3 before it answered" in run.output()


def test_gateway_cannot_start(runs):
    with socket.socket() as taken:  # the gateway's port is taken: uvicorn cannot bind it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        run = runs(PORT=str(taken.getsockname()[1]), OLLABRIDGE_MODELS="")
        rc = run.wait(60)
    out = run.output()
    assert rc != 0, out
    assert "the gateway could not start or stopped unexpectedly" in out
    assert any(e["event"] == "sigterm" for e in run.events())  # Ollama was stopped too


def test_ollama_slow_to_answer(runs):
    """Ollama that never answers: a bounded wait with a clear message, then the gateway anyway."""
    run = runs(STANDIN_MODE="hang", OLLABRIDGE_OLLAMA_WAIT="1", OLLABRIDGE_MODELS="")
    wait_http(f"{run.url}/health", run.proc, 60, run.out)
    assert "Ollama did not answer at" in run.output() and "within 1s; starting the gateway anyway" in run.output()
    health = httpx.get(f"{run.url}/health", timeout=5).json()
    assert health["status"] == "degraded" and health["engine"]["active"] == "ollama"
    os.kill(run.proc.pid, signal.SIGTERM)
    assert run.wait(30) == 0
    assert any(e["event"] == "sigterm" for e in run.events())


@pytest.mark.skipif(shutil.which("ollama") is not None, reason="a real ollama is on PATH")
def test_without_ollama_binary_uses_inbox_engine(runs):
    """No `ollama` on PATH: the gateway starts the in-box engine (the bundled model) and serves it."""
    run = runs(with_ollama=False)
    wait_http(f"{run.url}/health", run.proc, 60, run.out)
    assert "no 'ollama' binary on PATH" in run.output()
    engine = wait_until(lambda: (e := httpx.get(f"{run.url}/health", timeout=5).json()["engine"])["state"]
                        in ("running", "failed") and e, 120, "the in-box engine to start")
    assert engine["mode"] == "auto" and engine["active"] == "inbox" and engine["state"] == "running", engine
    assert "gemma3:270m" in [m["name"] for m in httpx.get(f"{run.url}/ollama/api/tags", timeout=5).json()["models"]]
    assert httpx.get(f"{run.url}/health", timeout=5).json()["pulls"]["skipped"]
    os.kill(run.proc.pid, signal.SIGTERM)
    assert run.wait(30) == 0


@pytest.mark.skipif(shutil.which("ollama") is not None, reason="a real ollama is on PATH")
def test_without_ollama_binary_and_a_missing_model_says_why(runs, tmp_path):
    """The in-box engine cannot start: the gateway still serves, says there is no engine, and why."""
    missing = tmp_path / "missing.gguf"
    run = runs(with_ollama=False, OLLABRIDGE_INBOX_MODEL=str(missing), OLLABRIDGE_ENGINE_START_TIMEOUT="30")
    wait_http(f"{run.url}/health", run.proc, 60, run.out)
    engine = wait_until(lambda: (e := httpx.get(f"{run.url}/health", timeout=5).json()["engine"])["state"]
                        in ("running", "failed") and e, 60, "the in-box engine to give up")
    assert engine["mode"] == "auto" and engine["active"] == "none" and engine["state"] == "failed", engine
    assert "exited with code" in engine["detail"]
    assert f"OLLABRIDGE_INBOX_MODEL={str(missing)!r}: no such file" in run.output()
    os.kill(run.proc.pid, signal.SIGTERM)
    assert run.wait(30) == 0
