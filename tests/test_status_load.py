"""Seeing the load (issue 14): the queue per caller, each backend's measured speed, the streams'
counts in `/health` and `/metrics`, and the 15-minute history the Status tab plots.

The history is sampled with an injected clock (no sleeps); the queue is seen behind a real gateway
process with a 1-slot node held busy (tests/relay_support.py RawNode), asked by real clients.
"""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from ollabridge.config import Settings
from ollabridge.gateway import Gateway
from ollabridge.stats_history import StatsHistory
from ollabridge.status import caller_label, queue_by_caller
from tests.relay_support import AUTH, RawNode, fake_ollama, gateway, pair, wait_until
from tests.test_router import Scripted

MSG = [{"role": "user", "content": "hi"}]
FINAL = {"model": "raw:latest", "created_at": "2026-01-01T00:00:00Z", "message": {"role": "assistant", "content": "!"}, "done": True, "done_reason": "stop",
         "prompt_eval_count": 2, "eval_count": 40, "eval_duration": 2_000_000_000}


# -- the history ------------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_history_samples_tokens_per_second_from_tokens_made_in_each_interval():
    clock, counts, load = Clock(), {"gpu": 0, "cpu": 0}, {"in_flight": 0, "queued": 0}
    history = StatsHistory(lambda: counts, lambda: load["in_flight"], lambda: load["queued"], period=5, clock=clock)
    history.sample()  # the first sample: no interval yet
    clock.now += 5
    counts.update(gpu=100, cpu=10)
    load.update(in_flight=3, queued=2)
    history.sample()
    clock.now += 5
    counts.update(gpu=100, cpu=35)  # the GPU idle, the CPU faster
    load.update(in_flight=1, queued=0)
    history.sample()
    clock.now += 5
    counts.pop("gpu")  # the node left and came back: its counter begins again
    counts.update(gpu=30, cpu=35)
    history.sample()
    samples = [s.as_dict() for s in history.recent()]
    assert [s["tokens_per_s"] for s in samples] == [{}, {"gpu": 20.0, "cpu": 2.0}, {"cpu": 5.0, "gpu": 0.0},
                                                    {"gpu": 6.0, "cpu": 0.0}]
    assert [(s["in_flight"], s["queued"]) for s in samples] == [(0, 0), (3, 2), (1, 0), (1, 0)]
    assert [s["at"] for s in samples] == [1000.0, 1005.0, 1010.0, 1015.0]


def test_history_keeps_the_last_fifteen_minutes_only():
    clock = Clock()
    history = StatsHistory(lambda: {"a": 0}, lambda: 0, lambda: 0, period=5, clock=clock)
    for _ in range(1000):
        history.sample()
        clock.now += 5
    kept = history.recent()
    assert len(history.samples) <= 15 * 60 / 5 + 1
    assert kept[-1].at - kept[0].at <= 15 * 60 and clock.now - kept[0].at <= 15 * 60 + 5


async def test_history_runs_with_the_gateway_and_stops_with_it(tmp_path: Path):
    gw = Gateway(Settings(OLLABRIDGE_DATA_DIR=str(tmp_path), OLLABRIDGE_UI="0", OLLABRIDGE_ENGINE="ollama",
                          OLLAMA_BASE_URL="http://127.0.0.1:9", OLLABRIDGE_HISTORY_PERIOD="0.01"))
    await gw.start()
    try:
        async with asyncio.timeout(5):
            while len(gw.history.samples) < 3:
                await asyncio.sleep(0.01)
    finally:
        await gw.stop()
    taken = len(gw.history.samples)
    await asyncio.sleep(0.05)
    assert len(gw.history.samples) == taken  # stopped with the gateway
    assert {"period_s", "window_s", "samples"} <= gw.views.history().keys()


async def test_tokens_are_counted_as_they_stream_and_topped_up_by_the_final_count():
    from ollabridge.routing import Router
    gate = asyncio.Event()
    backend = Scripted("b", ["a"], gate=gate)
    router = Router()
    router.add(backend)
    stream = router.chat({"model": "a", "messages": []})
    first = asyncio.create_task(anext(stream))
    gate.set()
    await first
    assert router.streamed() == {"b": 1}  # the first chunk, before the stream ended
    [c async for c in stream]
    assert router.streamed() == {"b": 1}  # eval_count 1: nothing to top up
    backend.stats.streamed = 0
    backend.gate = None

    class Bulk(Scripted):  # one chunk, then a final count of 50 (a backend that batches)
        async def stream(self, op, body):
            yield {"model": "a", "message": {"role": "assistant", "content": "x" * 50}, "done": False}
            yield {"model": "a", "message": {"role": "assistant", "content": ""}, "done": True, "eval_count": 50}
    router.add(Bulk("bulk", ["c"]))
    [c async for c in router.chat({"model": "c", "messages": []})]
    assert router.streamed()["bulk"] == 50


# -- callers as /health and /metrics name them ----------------------------------------------------
def test_callers_are_named_by_key_name_or_a_hash_never_by_address():
    names = {"key_1": "my-app"}.get
    assert caller_label("key:key_1", names) == "key:my-app"
    assert caller_label("key:gone", names) == "key:gone"
    assert caller_label("ip:127.0.0.1", names) == caller_label("ip:::1", names) == "local"
    outside = caller_label("ip:203.0.113.7", names)
    assert re.fullmatch(r"client-[0-9a-f]{10}", outside) and "203" not in outside
    assert caller_label("ip:203.0.113.7", names) == outside != caller_label("ip:203.0.113.8", names)
    assert caller_label("", names) == "unknown"


def test_the_queue_per_caller_is_bounded():
    waiting = {f"ip:198.51.100.{i}": 1 for i in range(50)} | {"key:key_1": 7}
    shown = queue_by_caller(waiting, {"key_1": "batch"}.get, limit=5)
    assert list(shown)[0] == "key:batch" and shown["key:batch"] == 7
    assert len(shown) == 6 and shown["other"] == 46 and sum(shown.values()) == 57


async def test_metrics_show_every_stream_count_and_each_models_speed(tmp_path: Path):
    gw = Gateway(Settings(OLLABRIDGE_DATA_DIR=str(tmp_path), OLLABRIDGE_UI="0"))
    gw.router.stream_stats = lambda: {"resumed": 2, "resume_failed": 1, "stall_probes_alive": 4, "stalls_lost": 3,
                                      "affinity_hits": 9, "affinity_yielded": 0,
                                      "affinity_misses": 5, "widgets_made": 6, "not a metric name": 1, "detail": "text"}
    gw.router.add(gw.ollama)  # as start() adds it
    gw.ollama.measured("qwen:1b", 0.25, 42.0)
    text = gw.metrics.render().decode()
    for line in ('ollabridge_stream_resumes_total{result="resumed"} 2.0',
                 'ollabridge_stream_resumes_total{result="failed"} 1.0',
                 'ollabridge_stall_probes_total{result="alive"} 4.0',
                 'ollabridge_stall_probes_total{result="lost"} 3.0',
                 'ollabridge_affinity_total{result="hit"} 9.0',
                 'ollabridge_affinity_total{result="miss"} 5.0',
                 "ollabridge_widgets_made_total 6.0",  # a count not named here yet still shows
                 'ollabridge_backend_model_tokens_per_second{backend="ollama",kind="ollama",model="qwen:1b"} 42.0',
                 'ollabridge_backend_model_ttft_seconds{backend="ollama",kind="ollama",model="qwen:1b"} 0.25'):
        assert line in text, line
    assert "not a metric name" not in text and "detail" not in text


# -- a real gateway with a 1-slot node held busy ----------------------------------------------------
@pytest.fixture(scope="module")
def env(out_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    logs = out_dir / "status-load"
    logs.mkdir(exist_ok=True)
    tmp = tmp_path_factory.mktemp("status-load")
    with fake_ollama(logs, "cpu:latest") as cpu, gateway(logs, tmp / "data", cpu, OLLABRIDGE_FORWARDED_HOPS="1") as gw:
        yield SimpleNamespace(gw=gw, token=pair(gw, "raw")["node_token"])


def _chat(env, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{env.gw}/v1/chat/completions", timeout=30, headers=headers,
                      json={"model": "raw", "messages": MSG})


def _queue_seen(env, callers: list[dict[str, str]]) -> SimpleNamespace:
    """Hold the 1-slot node busy, queue a request for each of `callers` (headers): /health and /metrics
    then (`health`, `metrics`), the `answers` once the node answered all, and /health and /metrics
    after that, the node still connected (`after`, `after_metrics`)."""
    with RawNode(env.gw, env.token, slots=1) as node, ThreadPoolExecutor(len(callers) + 1) as pool:
        wait_until(lambda: any("raw:latest" in b["models"] for b in httpx.get(f"{env.gw}/health").json()["backends"]),
                   10, "the node's model listed")
        holder = pool.submit(_chat, env, callers[0])
        held = node.recv("req")["id"]  # the node's one slot, taken
        queued = [pool.submit(_chat, env, headers) for headers in callers]
        wait_until(lambda: httpx.get(f"{env.gw}/health").json()["queue"]["waiting"] == len(callers), 10,
                   "the requests queued")
        health, metrics = httpx.get(f"{env.gw}/health").json(), httpx.get(f"{env.gw}/metrics").text
        node.res(held, FINAL, done=True)
        for _ in queued:
            node.res(node.recv("req")["id"], FINAL, done=True)
        answers = [f.result(30) for f in (holder, *queued)]
        return SimpleNamespace(health=health, metrics=metrics, answers=answers,
                               after=httpx.get(f"{env.gw}/health").json(),
                               after_metrics=httpx.get(f"{env.gw}/metrics").text)


def test_health_and_metrics_show_who_waits_for_a_busy_one_slot_node_never_their_address(env):
    seen = _queue_seen(env, [{}, {"X-Forwarded-For": "203.0.113.7"}])
    health, metrics, answers, after = seen.health, seen.metrics, seen.answers, seen.after
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert health["queue"]["max"] == 64 and health["requests_in_flight"] >= 3
    by_caller = health["queue"]["by_caller"]
    outside = next((c for c in by_caller if c.startswith("client-")), None)
    assert by_caller == {"local": 1, outside: 1}, by_caller
    assert 'ollabridge_queue_waiting_by_caller{caller="local"} 1.0' in metrics
    assert f'ollabridge_queue_waiting_by_caller{{caller="{outside}"}} 1.0' in metrics
    assert "203.0.113.7" not in str(health) + metrics  # open routes: no caller's address
    assert after["queue"] == {"waiting": 0, "max": 64, "by_caller": {}}
    # The node's measured speed, per model: 40 tokens in 2 s, as it said.
    raw = next(b for b in after["backends"] if b["name"] == "raw")
    assert [(m, s["tokens_per_s"]) for m, s in raw["speed"].items()] == [("raw", 20.0)]
    assert 'ollabridge_backend_model_tokens_per_second{backend="raw",kind="node",model="raw"} 20.0' \
        in seen.after_metrics
    assert {"resumed", "resume_failed", "stall_probes_alive", "stalls_lost"} <= after["streams"].keys()


def test_a_caller_with_an_api_key_is_shown_by_the_keys_name(env):
    minted = httpx.post(f"{env.gw}/admin/keys", json={"name": "batch-app"}, headers=AUTH).json()
    try:
        bearer = {"Authorization": f"Bearer {minted['key']}"}
        seen = _queue_seen(env, [bearer])
    finally:
        httpx.delete(f"{env.gw}/admin/keys/{minted['id']}", headers=AUTH)  # the API open again for the others
    assert all(a.status_code == 200 for a in seen.answers), [a.text for a in seen.answers]
    assert seen.health["queue"]["by_caller"] == {"key:batch-app": 1}
    assert 'ollabridge_queue_waiting_by_caller{caller="key:batch-app"} 1.0' in seen.metrics
    assert minted["key"] not in str(seen.health) + seen.metrics


def test_the_charts_draw_each_backend_and_escape_the_names_nodes_choose():
    from ollabridge.ui.chart import history_charts
    samples = [{"at": 100.0 + i, "tokens_per_s": {"<b>x</b>": float(i), "cpu": 1.0}, "in_flight": i, "queued": 0}
               for i in range(4)]
    page = history_charts({"period_s": 1.0, "window_s": 900.0, "samples": samples}, now=103.0)
    assert "<b>x</b>" not in page and 'data-series="&lt;b&gt;x&lt;/b&gt;"' in page
    assert 'data-series="cpu" data-points="4" data-last="1" data-max="1"' in page
    assert 'data-series="in flight" data-points="4" data-last="3" data-max="3"' in page
    assert "−60 s" in page  # a gateway younger than the window: the last minute, not 15 empty ones
    assert "no data yet" in history_charts({"period_s": 1.0, "window_s": 900.0, "samples": []}, now=0.0)
