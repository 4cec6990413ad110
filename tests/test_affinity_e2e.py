"""Conversation affinity with real tokens: two in-box engines (llama.cpp) as two GPU nodes of one
gateway. Two conversations with long system prompts, one turn at a time: each later turn goes back to
the node whose engine still holds its conversation in its KV cache (so its prompt is barely evaluated
again: the time it saves is measured by bench/affinity.py, not here, on a shared machine). Without
affinity both conversations land on the first node and evict each other's cache."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.procs import free_port, running
from tests.relay_support import fake_ollama, gateway, node, pair, save_credential


def system_prompt(name: str) -> str:
    """~300 tokens, different for each conversation from its first words."""
    return f"Conversation {name}. " + " ".join(f"Rule {i} of {name}: answer briefly and kindly." for i in range(30))


@pytest.fixture(scope="module")
def second_engine(out_dir: Path) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running(["-m", "ollabridge.engine", "--host", "127.0.0.1", "--port", str(port)],
                 f"{url}/api/version", log=out_dir / "engine-2.log", timeout=300):
        yield url


def chat(gw: str, model: str, messages: list[dict]) -> dict:
    """The final chunk of a streamed /api/chat, with the reply's text under "text"."""
    text = []
    with httpx.stream("POST", f"{gw}/ollama/api/chat", timeout=300,
                      json={"model": model, "messages": messages, "options": {"num_predict": 4, "temperature": 0}}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line:
                chunk = httpx.Response(200, content=line).json()
                text.append(chunk.get("message", {}).get("content", ""))
    return {**chunk, "text": "".join(text)}


def test_later_turns_reuse_the_engine_that_holds_their_prefix(engine_url: str, second_engine: str, out_dir: Path,
                                                               tmp_path: Path) -> None:
    logs = out_dir / "affinity"
    logs.mkdir(exist_ok=True)
    model = httpx.get(f"{engine_url}/api/tags").json()["models"][0]["name"]
    with fake_ollama(logs, "cpu-only:latest") as cpu, gateway(logs, tmp_path / "data", cpu) as gw:
        creds = {name: tmp_path / f"{name}.json" for name in ("engine-1", "engine-2")}
        for name, path in creds.items():
            save_credential(path, gw, pair(gw, name))
        with node(logs, gw, engine_url, creds["engine-1"], "engine-1", slots=1), \
                node(logs, gw, second_engine, creds["engine-2"], "engine-2", slots=1):
            talks = {name: [{"role": "system", "content": system_prompt(name)}, {"role": "user", "content": "Hi."}]
                     for name in ("A", "B")}
            first = {}
            for name, messages in talks.items():  # A then B: two conversations, one node each
                first[name] = chat(gw, model, messages)
                assert first[name]["prompt_eval_count"] > 250
            for name, messages in talks.items():  # each one's next turn, interleaved
                messages += [{"role": "assistant", "content": first[name]["text"]},
                             {"role": "user", "content": "Tell me more."}]
                later = chat(gw, model, messages)
                assert later["text"] and later["prompt_eval_count"] > first[name]["prompt_eval_count"]
            health = httpx.get(f"{gw}/health").json()
            # Each conversation stayed on its engine (off: all four on engine-1, evicting each other).
            assert {b["name"]: b["requests"] for b in health["backends"] if b["kind"] == "node"} \
                == {"engine-1": 2, "engine-2": 2}
            streams = health["streams"]
            assert (streams["affinity_hits"], streams["affinity_misses"], streams["affinity_yielded"]) == (2, 2, 0)
            assert 'ollabridge_affinity_total{result="hit"} 2.0' in httpx.get(f"{gw}/metrics").text
