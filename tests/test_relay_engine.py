"""A node backed by the real in-box engine (llama.cpp) serves the gateway's chat, streamed."""

from __future__ import annotations

import httpx
import openai

from tests.relay_support import fake_ollama, gateway, node, pair, save_credential


def test_node_backed_by_the_inbox_engine(engine_url: str, out_dir, tmp_path) -> None:
    logs = out_dir / "relay"
    logs.mkdir(exist_ok=True)
    model = httpx.get(f"{engine_url}/api/tags").json()["models"][0]["name"]
    with fake_ollama(logs, "cpu-only:latest") as cpu, gateway(logs, tmp_path / "data", cpu) as gw:
        save_credential(tmp_path / "creds.json", gw, pair(gw, "engine-node"))
        with node(logs, gw, engine_url, tmp_path / "creds.json", "engine-node", slots=2):
            oai = openai.OpenAI(base_url=f"{gw}/ollama/v1", api_key="x", max_retries=0, timeout=120)
            stream = oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hi."}],
                                                 stream=True, max_tokens=8, temperature=0)
            chunks = list(stream)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text.strip()
            assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] \
                in (["length"], ["stop"])
            with httpx.stream("POST", f"{gw}/ollama/api/chat", timeout=120,
                              json={"model": model, "messages": [{"role": "user", "content": "Hi"}],
                                    "options": {"num_predict": 4}}) as r:
                lines = [line for line in r.iter_lines() if line]
            assert '"done":true' in lines[-1].replace(" ", "")
