"""The public API's edge: keys, rate limits, request ids and log lines, keep-alives and timeouts,
metrics, graceful shutdown. Real gateway processes in front of scripted Ollamas (tests/fake_ollama.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from tests.procs import ROOT, free_port, wait_http
from tests.relay_support import (ADMIN, AUTH, fake_ollama, gateway, gateway_env, node, pair, relay_nodes,
                                 save_credential, wait_until)

MSG = [{"role": "user", "content": "hi"}]
CHAT = {"model": "a", "messages": MSG}


def _log_lines(log: Path) -> list[dict]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if "ollabridge.access: " in line:
            out.append(json.loads(line.split("ollabridge.access: ", 1)[1]))
    return out


@pytest.fixture(scope="module")
def upstream(out_dir):
    with fake_ollama(out_dir, "a:latest") as url:
        yield url


# -- keys -----------------------------------------------------------------------------------------
def test_keys_from_env_and_minted_ones_guard_the_api_but_not_the_rest(out_dir, tmp_path, upstream):
    with gateway(out_dir, tmp_path, upstream, OLLABRIDGE_API_KEYS=f"sk-env-1,{ADMIN}") as gw:
        refused = httpx.post(f"{gw}/ollama/v1/chat/completions", json=CHAT)
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
        assert refused.headers["x-request-id"]
        native = httpx.post(f"{gw}/ollama/api/chat", json={**CHAT, "stream": False})
        assert native.status_code == 401 and isinstance(native.json()["error"], str)
        assert httpx.get(f"{gw}/ollama/api/tags", headers={"X-API-Key": "wrong"}).status_code == 401
        # The admin token is never an API key, even when listed in OLLABRIDGE_API_KEYS.
        as_key = httpx.get(f"{gw}/v1/models", headers=AUTH)
        assert as_key.status_code == 401 and "admin token is not an API key" in as_key.json()["error"]["message"]
        sdk = openai.OpenAI(base_url=f"{gw}/ollama/v1", api_key="sk-env-1", max_retries=0)
        assert sdk.chat.completions.create(model="a", messages=MSG).choices[0].message.content.startswith("tok0")
        assert httpx.get(f"{gw}/ollama/api/tags", headers={"X-API-Key": "sk-env-1"}).status_code == 200
        native_client = ollama.Client(host=f"{gw}/ollama", headers={"Authorization": "Bearer sk-env-1"})
        assert native_client.chat(model="a", messages=MSG).message.content.startswith("tok0")
        with pytest.raises(ollama.ResponseError) as denied:
            ollama.Client(host=f"{gw}/ollama").list()
        assert denied.value.status_code == 401
        for open_path in ("/health", "/ollama/status", "/metrics"):
            assert httpx.get(f"{gw}{open_path}").status_code == 200, open_path
        assert httpx.get(f"{gw}/device/nodes").status_code == 401  # the owner's list: the admin token

        assert httpx.post(f"{gw}/admin/keys", json={"name": "app"}).status_code == 401
        assert httpx.post(f"{gw}/admin/keys", json={"name": "app"}, headers={"Authorization": "Bearer sk-env-1"}
                          ).status_code == 401
        minted = httpx.post(f"{gw}/admin/keys", json={"name": "app"}, headers=AUTH).json()
        assert minted["key"].startswith("obk_") and minted["name"] == "app"
        assert httpx.get(f"{gw}/v1/models", headers={"Authorization": f"Bearer {minted['key']}"}).status_code == 200
        listed = httpx.get(f"{gw}/admin/keys", headers=AUTH).json()
        assert listed["api_open"] is False and {k["source"] for k in listed["keys"]} == {"env", "minted"}
        assert minted["key"] not in json.dumps(listed) and "sk-env-1" not in json.dumps(listed)
        env_id = next(k["id"] for k in listed["keys"] if k["source"] == "env")
        assert httpx.delete(f"{gw}/admin/keys/{env_id}", headers=AUTH).status_code == 409
        assert httpx.delete(f"{gw}/admin/keys/{minted['id']}", headers=AUTH).json()["revoked"] is True
        assert httpx.get(f"{gw}/v1/models", headers={"Authorization": f"Bearer {minted['key']}"}).status_code == 401
        assert httpx.delete(f"{gw}/admin/keys/{minted['id']}", headers=AUTH).status_code == 404
    # Keys are stored hashed, in the pairing store's database.
    assert minted["key"].encode() not in (tmp_path / "ollabridge.db").read_bytes()


def test_minted_keys_close_an_open_api_and_survive_a_restart(out_dir, tmp_path, upstream):
    with gateway(out_dir, tmp_path, upstream) as gw:
        assert httpx.get(f"{gw}/v1/models").status_code == 200  # no keys: open
        minted = httpx.post(f"{gw}/admin/keys", json={"name": "one"}, headers=AUTH).json()
        assert httpx.get(f"{gw}/v1/models").status_code == 401
    with gateway(out_dir, tmp_path, upstream) as gw:
        assert httpx.get(f"{gw}/v1/models").status_code == 401
        assert httpx.get(f"{gw}/v1/models", headers={"X-API-Key": minted["key"]}).status_code == 200
        httpx.delete(f"{gw}/admin/keys/{minted['id']}", headers=AUTH).raise_for_status()
        assert httpx.get(f"{gw}/v1/models").status_code == 200  # none left: open again


# -- rate limits ----------------------------------------------------------------------------------
def test_rate_limits_per_address_and_per_key(out_dir, tmp_path, upstream):
    with gateway(out_dir, tmp_path, upstream, OLLABRIDGE_RATE_LIMIT_RPM="3", OLLABRIDGE_FORWARDED_HOPS="1",
                 OLLABRIDGE_KEY_RATE_LIMIT_RPM="2") as gw:
        alice = {"X-Forwarded-For": "198.51.100.1, 203.0.113.5"}  # the proxy appended .5: that is the caller
        codes = [httpx.get(f"{gw}/v1/models", headers=alice).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        limited = httpx.get(f"{gw}/ollama/v1/models", headers=alice)
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"]["type"] == "rate_limit_error"
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
        native = httpx.get(f"{gw}/ollama/api/tags", headers=alice)
        assert native.status_code == 429 and isinstance(native.json()["error"], str)
        # Another caller has its own budget, whatever it puts in front of the trusted hop.
        assert httpx.get(f"{gw}/v1/models", headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.6"}
                         ).status_code == 200
        assert httpx.get(f"{gw}/health").status_code == 200  # not limited
        minted = httpx.post(f"{gw}/admin/keys", json={"name": "k", "rpm": 1}, headers=AUTH).json()
        keyed = {**alice, "Authorization": f"Bearer {minted['key']}"}
        assert [httpx.get(f"{gw}/v1/models", headers=keyed).status_code for _ in range(2)] == [200, 429]
        metrics = httpx.get(f"{gw}/metrics").text
        assert 'ollabridge_rate_limited_total{limit="rpm",scope="ip"}' in metrics
        assert 'ollabridge_rate_limited_total{limit="rpm",scope="key"} 1.0' in metrics


def test_forwarded_for_is_ignored_unless_trusted_and_loopback_is_not_limited(out_dir, tmp_path, upstream):
    port = free_port()
    with gateway(out_dir, tmp_path, upstream, port=port, OLLABRIDGE_RATE_LIMIT_RPM="1") as gw:
        # One claimed address again and again: were the header trusted, that address (not loopback)
        # would get its 1 request a minute and then 429s. Untrusted, the caller is this machine.
        claim = {"X-Forwarded-For": "203.0.113.7"}
        ids = [f"xff-{i}" for i in range(4)]
        codes = [httpx.get(f"{gw}/v1/models", headers={**claim, "X-Request-ID": rid}).status_code for rid in ids]
        assert codes == [200] * 4
        log = out_dir / f"gateway-{port}.log"
        lines = wait_until(lambda: (found := [x for x in _log_lines(log) if x["id"] in ids]) and len(found) == 4
                           and found, 5, "log lines")
    assert {x["client"] for x in lines} == {"127.0.0.1"}  # the peer, not the header's claim


def test_concurrent_streams_per_address(out_dir, tmp_path):
    with fake_ollama(out_dir, "a:latest", "--delay", "0.05", "--chunks", "40") as slow, \
            gateway(out_dir, tmp_path, slow, OLLABRIDGE_RATE_LIMIT_STREAMS="1", OLLABRIDGE_FORWARDED_HOPS="1") as gw:
        who = {"X-Forwarded-For": "203.0.113.9"}
        with httpx.stream("POST", f"{gw}/v1/chat/completions", json={**CHAT, "stream": True}, headers=who) as r:
            assert r.status_code == 200
            second = httpx.post(f"{gw}/ollama/api/chat", json=CHAT, headers=who)
            assert second.status_code == 429 and second.headers["retry-after"] == "1"
            other = httpx.post(f"{gw}/v1/chat/completions", json=CHAT, headers={"X-Forwarded-For": "203.0.113.10"})
            assert other.status_code == 200
            assert sum(1 for line in r.iter_lines() if line.startswith("data: ")) == 40 + 2  # + stop chunk, [DONE]
        assert httpx.post(f"{gw}/v1/chat/completions", json=CHAT, headers=who).status_code == 200


# -- ids, logs, metrics ---------------------------------------------------------------------------
def test_request_id_and_one_structured_log_line_without_content(out_dir, tmp_path, upstream):
    port = free_port()
    with gateway(out_dir, tmp_path, upstream, port=port) as gw:
        mine = httpx.post(f"{gw}/v1/chat/completions", json={**CHAT, "messages": [
            {"role": "user", "content": "my secret prompt"}]}, headers={"X-Request-ID": "trace-42"})
        assert mine.headers["x-request-id"] == "trace-42"
        fresh = httpx.post(f"{gw}/ollama/api/chat", json={**CHAT, "stream": True})
        assert len(fresh.headers["x-request-id"]) == 16
        assert httpx.get(f"{gw}/v1/models", headers={"X-Request-ID": "bad id;<x>"}).headers["x-request-id"] != "bad id;<x>"
        log = out_dir / f"gateway-{port}.log"
        lines = wait_until(lambda: [x for x in _log_lines(log) if x["id"] in ("trace-42", fresh.headers["x-request-id"])
                                    ] if len(_log_lines(log)) >= 3 else None, 5, "log lines")
    first = next(x for x in lines if x["id"] == "trace-42")
    assert first["route"] == "/v1/chat/completions" and first["status"] == 200 and first["model"] == "a"
    assert first["backend"] == "ollama" and first["tokens_in"] == 3 and first["tokens_out"] == 5
    assert first["duration_ms"] > 0
    native = next(x for x in lines if x["id"] == fresh.headers["x-request-id"])
    assert native["route"] == "/ollama/api/chat" and native["ttft_ms"] is not None
    text = log.read_text()
    assert "my secret prompt" not in text and "tok0" not in text


def test_log_content_opt_in(out_dir, tmp_path, upstream):
    port = free_port()
    with gateway(out_dir, tmp_path, upstream, port=port, OLLABRIDGE_LOG_CONTENT="1") as gw:
        httpx.post(f"{gw}/v1/chat/completions", json={**CHAT, "messages": [{"role": "user", "content": "open prompt"}]},
                   headers={"X-Request-ID": "content-1"})
        log = out_dir / f"gateway-{port}.log"
        line = wait_until(lambda: next((x for x in _log_lines(log) if x["id"] == "content-1"), None), 5)
    assert line["prompt"][0]["content"] == "open prompt" and line["completion"].startswith("tok0 tok1")


def test_metrics_after_traffic(out_dir, tmp_path, upstream):
    with gateway(out_dir, tmp_path, upstream) as gw:
        sdk = openai.OpenAI(base_url=f"{gw}/ollama/v1", api_key="x", max_retries=0)
        sdk.chat.completions.create(model="a", messages=MSG)
        list(sdk.chat.completions.create(model="a", messages=MSG, stream=True))
        httpx.post(f"{gw}/ollama/v1/chat/completions", json={"model": "nope", "messages": MSG})
        text = httpx.get(f"{gw}/metrics")
        assert text.headers["content-type"].startswith("text/plain")
        body = text.text
    for needle in ('ollabridge_requests_total{backend="ollama",method="POST",route="/ollama/v1/chat/completions",'
                   'status="200"} 2.0',
                   'route="/ollama/v1/chat/completions",status="404"',
                   'ollabridge_time_to_first_token_seconds_count{backend="ollama",route="/ollama/v1/chat/completions"} 1.0',
                   'ollabridge_tokens_total{backend="ollama",kind="ollama",type="completion"} 10.0',
                   'ollabridge_nodes_connected 0.0', 'ollabridge_requests_in_flight 0.0',
                   'ollabridge_backend_up{backend="ollama",kind="ollama"} 1.0', 'process_resident_memory_bytes'):
        assert needle in body, needle


def test_metrics_can_require_the_admin_token(out_dir, tmp_path, upstream):
    with gateway(out_dir, tmp_path, upstream, OLLABRIDGE_METRICS="admin") as gw:
        assert httpx.get(f"{gw}/metrics").status_code == 401
        assert "ollabridge_requests_total" in httpx.get(f"{gw}/metrics", headers=AUTH).text


# -- keep-alives and timeouts ---------------------------------------------------------------------
def test_sse_keepalives_while_the_first_token_is_slow_and_clients_still_parse(out_dir, tmp_path):
    with fake_ollama(out_dir, "a:latest", "--delay", "1.0", "--chunks", "2") as slow, \
            gateway(out_dir, tmp_path, slow, OLLABRIDGE_KEEPALIVE="0.3") as gw:
        with httpx.stream("POST", f"{gw}/v1/chat/completions", json={**CHAT, "stream": True}) as r:
            assert r.status_code == 200
            raw = r.read().decode()
        events = raw.split("\n\n")
        first_data = next(i for i, e in enumerate(events) if e.startswith("data: "))
        assert first_data >= 2 and all(e == ": keep-alive" for e in events[:first_data])
        assert ": keep-alive" in events[first_data:]  # between the two slow chunks too
        assert raw.rstrip().endswith("data: [DONE]")
        sdk = openai.OpenAI(base_url=f"{gw}/v1", api_key="x", max_retries=0)
        text = "".join(c.choices[0].delta.content or "" for c in sdk.chat.completions.create(
            model="a", messages=MSG, stream=True) if c.choices)
        assert text == "tok0 tok1 "
        # NDJSON gets nothing extra: a blank line would break the official ollama client.
        with httpx.stream("POST", f"{gw}/ollama/api/chat", json=CHAT) as r:
            lines = list(r.iter_lines())
        assert all(line.strip() for line in lines[:-1]) and len(lines) == 3


def test_errors_before_the_first_keepalive_keep_their_status(out_dir, tmp_path, upstream):
    with gateway(out_dir, tmp_path, upstream, OLLABRIDGE_KEEPALIVE="5") as gw:
        r = httpx.post(f"{gw}/v1/chat/completions", json={"model": "nope", "messages": MSG, "stream": True})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_stuck_relay_node_gets_first_token_timeout_as_an_error_event(out_dir, tmp_path):
    with fake_ollama(out_dir, "cpu:latest") as cpu, fake_ollama(out_dir, "stuck:latest", "--hang") as hung, \
            gateway(out_dir, tmp_path / "d", cpu, OLLABRIDGE_FIRST_TOKEN_TIMEOUT="1",
                    OLLABRIDGE_KEEPALIVE="0.3") as gw:
        save_credential(tmp_path / "c.json", gw, pair(gw, "stuck"))
        with node(out_dir, gw, hung, tmp_path / "c.json", "stuck"):
            started = time.monotonic()
            with httpx.stream("POST", f"{gw}/v1/chat/completions",
                              json={"model": "stuck", "messages": MSG, "stream": True}, timeout=30) as r:
                assert r.status_code == 200
                raw = r.read().decode()
            assert time.monotonic() - started < 10
            events = [e for e in raw.split("\n\n") if e]
            assert events[0] == ": keep-alive" and events[-1] == "data: [DONE]"
            error = json.loads(events[-2][6:])["error"]
            assert "sent nothing for 1s" in error["message"]
            whole = httpx.post(f"{gw}/v1/chat/completions", json={"model": "stuck", "messages": MSG}, timeout=30)
            assert whole.status_code == 504


def test_relay_node_silent_mid_stream_gets_the_idle_timeout_as_an_error_event(out_dir, tmp_path):
    with fake_ollama(out_dir, "cpu:latest") as cpu, fake_ollama(out_dir, "slow:latest", "--delay", "1.0") as slow, \
            gateway(out_dir, tmp_path / "d", cpu, OLLABRIDGE_FIRST_TOKEN_TIMEOUT="5", OLLABRIDGE_IDLE_TIMEOUT="0.5",
                    OLLABRIDGE_KEEPALIVE="0") as gw:
        save_credential(tmp_path / "c.json", gw, pair(gw, "slow"))
        with node(out_dir, gw, slow, tmp_path / "c.json", "slow"):
            with httpx.stream("POST", f"{gw}/v1/chat/completions",
                              json={"model": "slow", "messages": MSG, "stream": True}, timeout=30) as r:
                events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
            assert json.loads(events[0])["choices"][0]["delta"]["content"] == "tok0 "
            assert "sent nothing for 0.5s" in json.loads(events[-2])["error"]["message"] and events[-1] == "[DONE]"
            with httpx.stream("POST", f"{gw}/ollama/api/chat", json={"model": "slow", "messages": MSG}) as r:
                lines = [json.loads(line) for line in r.iter_lines() if line]
            assert lines[0]["message"]["content"] == "tok0 " and "sent nothing" in lines[-1]["error"]


def test_total_timeout_for_non_streamed_requests(out_dir, tmp_path):
    with fake_ollama(out_dir, "a:latest", "--hang") as hung, \
            gateway(out_dir, tmp_path, hung, OLLABRIDGE_REQUEST_TIMEOUT="1", OLLABRIDGE_FIRST_TOKEN_TIMEOUT="60") as gw:
        started = time.monotonic()
        r = httpx.post(f"{gw}/v1/chat/completions", json=CHAT, timeout=30)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        native = httpx.post(f"{gw}/ollama/api/chat", json={**CHAT, "stream": False}, timeout=30)
        assert native.status_code == 504 and "OLLABRIDGE_REQUEST_TIMEOUT" in native.json()["error"]
        assert time.monotonic() - started < 8
        assert 'ollabridge_requests_aborted_total{reason="timeout"} 2.0' in httpx.get(f"{gw}/metrics").text


# -- graceful shutdown ----------------------------------------------------------------------------
def _gateway_proc(out_dir: Path, tmp: Path, upstream: str, port: int | None = None,
                  **extra: str) -> tuple[subprocess.Popen, str, Path]:
    port = port or free_port()
    log = out_dir / f"gateway-drain-{port}.log"
    env = {**__import__("os").environ, "PYTHONUNBUFFERED": "1", **gateway_env(tmp, port, upstream, **extra)}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", proc, 60, log)
    return proc, url, log


def _stream_in_thread(url: str, body: dict, out: dict) -> threading.Thread:
    def run() -> None:
        try:
            with httpx.stream("POST", url, json=body, timeout=60) as r:
                out["status"] = r.status_code
                out["lines"] = []
                for line in r.iter_lines():
                    out["lines"].append(line)
        except httpx.HTTPError as exc:
            out["error"] = repr(exc)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_sigterm_lets_short_streams_finish_and_ends_long_ones_with_an_error_event(out_dir, tmp_path):
    with fake_ollama(out_dir, "a:latest", "--delay", "0.1", "--chunks", "10") as slow:
        proc, gw, log = _gateway_proc(out_dir, tmp_path, slow, OLLABRIDGE_SHUTDOWN_TIMEOUT="3")
        try:
            short, long_ = {}, {}
            threads = [_stream_in_thread(f"{gw}/v1/chat/completions", {**CHAT, "stream": True}, short),
                       _stream_in_thread(f"{gw}/ollama/api/chat", {**CHAT, "options": {"num_predict": 1000}}, long_)]
            wait_until(lambda: len(short.get("lines", [])) >= 2 and len(long_.get("lines", [])) >= 2, 10, "streaming")
            kept = httpx.Client(base_url=gw, timeout=5)
            assert kept.get("/health").status_code == 200  # a keep-alive connection opened before the signal
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            wait_until(lambda: "shutting down" in log.read_text(), 5, "drain started")
            with pytest.raises(httpx.HTTPError):  # no new connections
                httpx.get(f"{gw}/health", timeout=2)
            late = kept.post("/v1/chat/completions", json=CHAT)  # new requests on old connections: 503
            assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"
            assert late.headers["retry-after"] == "5"
            kept.close()
            proc.wait(20)
            took = time.monotonic() - started
            for t in threads:
                t.join(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        data = [line for line in short["lines"] if line.startswith("data: ")]
        assert data[-1] == "data: [DONE]" and len(data) == 10 + 2 and "error" not in "".join(data)
        assert json.loads(long_["lines"][-1])["error"].startswith("The gateway is shutting down")
        assert 2.5 < took < 12
        assert "drained: {'in_flight': 2, 'finished': 1, 'cut': 1}" in log.read_text()


def test_sigterm_tells_nodes_and_they_reconnect(out_dir, tmp_path):
    with fake_ollama(out_dir, "cpu:latest") as cpu, fake_ollama(out_dir, "gpu:latest", "--delay", "0.1") as gpu:
        proc, gw, log = _gateway_proc(out_dir, tmp_path / "d", cpu, OLLABRIDGE_SHUTDOWN_TIMEOUT="5")
        port = gw.rsplit(":", 1)[1]
        try:
            save_credential(tmp_path / "c.json", gw, pair(gw, "gpu"))
            with node(out_dir, gw, gpu, tmp_path / "c.json", "gpu") as agent:
                out: dict = {}
                thread = _stream_in_thread(f"{gw}/ollama/api/chat",
                                           {"model": "gpu", "messages": MSG, "options": {"num_predict": 15}}, out)
                wait_until(lambda: len(out.get("lines", [])) >= 2, 10, "node streaming")
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)
                thread.join(10)
                lines = [json.loads(x) for x in out["lines"]]
                assert lines[-1]["done"] is True and len(lines) == 16  # the node's stream finished
                wait_until(lambda: "is shutting down; finishing 1 request" in agent.text(), 5, "goaway seen")
                # The gateway comes back on the same address: the node reconnects on its own.
                proc, gw2, log = _gateway_proc(out_dir, tmp_path / "d", cpu, port=int(port))
                wait_until(lambda: any(n["name"] == "gpu" for n in relay_nodes(gw2)), 15, "node back")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)
