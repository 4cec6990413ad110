"""A gateway restart keeps its pairings: the node agent reconnects on its own and serves again."""

from __future__ import annotations

from contextlib import ExitStack

import httpx
import openai

from tests.procs import free_port
from tests.relay_support import AUTH, fake_ollama, gateway, node, pair, relay_nodes, save_credential, wait_connected


def test_restart_keeps_pairings_and_node_reconnects(out_dir, tmp_path) -> None:
    logs = out_dir / "relay"
    logs.mkdir(exist_ok=True)
    port = free_port()
    data = tmp_path / "data"
    creds = tmp_path / "creds.json"
    with fake_ollama(logs, "cpu:latest") as cpu, fake_ollama(logs, "gpu-r:latest", "--chunks", "3") as gpu:
        first = ExitStack()
        gw = first.enter_context(gateway(logs, data, cpu, port=port, OLLABRIDGE_DEVICE_RATE="3"))
        try:
            cred = pair(gw, "survivor")
            save_credential(creds, gw, cred)
            # /device/start is rate limited per client address (3 a minute here; pair() used one).
            assert [httpx.post(f"{gw}/device/start").status_code for _ in range(3)] == [200, 200, 429]
            with node(logs, gw, gpu, creds, "survivor") as agent:
                created = httpx.get(f"{gw}/device/nodes", headers=AUTH).json()["nodes"][0]["created"]
                first.close()  # the gateway stops; the agent keeps running and retries
                assert agent.proc.poll() is None
                with gateway(logs, data, cpu, port=port) as again:
                    assert again == gw
                    wait_connected(gw, "survivor", agent, timeout=20)  # backoff with jitter: 1s, 2s, ...
                    listed = httpx.get(f"{gw}/device/nodes", headers=AUTH).json()["nodes"]
                    assert [(n["node_id"], n["created"], n["connected"]) for n in listed] == \
                        [(cred["node_id"], created, True)]
                    oai = openai.OpenAI(base_url=f"{gw}/ollama/v1", api_key="x", max_retries=0)
                    reply = oai.chat.completions.create(model="gpu-r", messages=[{"role": "user", "content": "hi"}])
                    assert reply.choices[0].message.content == "tok0 tok1 tok2 "
                    assert [n["name"] for n in relay_nodes(gw)] == ["survivor"]
                    assert "reconnecting in" in agent.text()
        finally:
            first.close()
