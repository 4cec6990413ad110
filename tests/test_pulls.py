"""ModelPuller against a scripted Ollama (httpx.MockTransport): progress, retries, failures."""

from __future__ import annotations

import json

import httpx

from ollabridge.backends.pulls import ModelPuller, full_name


def ollama(script: dict[str, list[list[dict]]], present: list[str]):
    """A mock Ollama: each model's pulls answer, in turn, with the NDJSON events scripted for it."""
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/version":
            return httpx.Response(200, json={"version": "0.0.0"})
        if request.url.path == "/api/tags":
            return httpx.Response(200, json={"models": [{"name": m} for m in present]})
        model = json.loads(request.content)["model"]
        calls.append(model)
        events = script[model].pop(0)
        return httpx.Response(200, content="".join(json.dumps(e) + "\n" for e in events).encode())

    return httpx.MockTransport(handler), calls


LAYER = {"digest": "sha256:aa", "total": 200}


async def test_progress_retry_and_permanent_failure():
    transport, calls = ollama({
        "flaky:1b": [[{"status": "pulling manifest"}, {**LAYER, "status": "pulling aa", "completed": 50},
                      {"error": "read tcp: connection reset by peer"}],
                     [{**LAYER, "status": "pulling aa", "completed": 200}, {"status": "success"}]],
        "gone:1b": [[{"status": "pulling manifest"}, {"error": "pull model manifest: file does not exist"}]],
        "short:1b": [[{"status": "pulling manifest"}]] * 3,
    }, present=["have"])
    pulled = []

    async def on_pulled(model: str) -> None:
        pulled.append(model)

    puller = ModelPuller("http://ollama", ["have", "flaky:1b", "gone:1b", "short:1b", "flaky:1b"],
                         on_pulled=on_pulled, retry_delays=(0, 0), transport=transport, wait_s=1)
    await puller.run()
    states = {p["model"]: p for p in puller.snapshot()["models"]}
    assert list(states) == ["have", "flaky:1b", "gone:1b", "short:1b"]  # duplicates pulled once
    assert states["have"]["state"] == "present" and states["have"]["percent"] == 100.0
    assert states["flaky:1b"]["state"] == "done" and states["flaky:1b"]["completed"] == 200
    assert states["gone:1b"]["state"] == "failed" and "file does not exist" in states["gone:1b"]["error"]
    assert states["short:1b"]["state"] == "failed" and "ended before success" in states["short:1b"]["error"]
    assert calls == ["flaky:1b", "flaky:1b", "gone:1b", "short:1b", "short:1b", "short:1b"]
    assert pulled == ["flaky:1b"]
    assert puller.snapshot()["running"] is False


async def test_unreachable_ollama_and_skip():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    puller = ModelPuller("http://ollama", ["a"], transport=httpx.MockTransport(refuse), wait_s=0)
    await puller.run()
    [pull] = puller.snapshot()["models"]
    assert pull["state"] == "failed" and "did not answer within 0s" in pull["error"]

    skipped = ModelPuller("http://ollama", ["a"])
    skipped.skip("the in-box engine serves")
    assert skipped.snapshot()["skipped"] == "the in-box engine serves"
    assert skipped.snapshot()["models"][0]["state"] == "skipped"


def test_full_name():
    assert full_name("phi3") == "phi3:latest"
    assert full_name("qwen2.5:1.5b") == "qwen2.5:1.5b"
    assert full_name("hf.co/bartowski/x") == "hf.co/bartowski/x:latest"
    assert full_name("localhost:5000/m") == "localhost:5000/m:latest"
