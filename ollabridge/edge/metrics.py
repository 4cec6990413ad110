"""Prometheus metrics at `GET /metrics`.

The per-request cost must stay tiny (the gateway adds well under a millisecond), so requests
update plain dicts on the event loop and `prometheus_client` only formats them at scrape time
(a custom collector), together with live values read from the router and the relay hub then.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound, count in zip((*(str(b) for b in LATENCY_BUCKETS), "+Inf"), self.counts):
            total += count
            out.append((bound, total))
        return out


class Metrics:
    """What requests record (event-loop only); `render()` writes the Prometheus text."""

    def __init__(self, gateway: Any = None) -> None:
        self.gateway = gateway
        self.requests: dict[tuple[str, str, str, str], int] = {}  # (route, method, status, backend)
        self.duration: dict[tuple[str, str], _Histogram] = {}  # (route, backend)
        self.ttft: dict[tuple[str, str], _Histogram] = {}
        self.tokens: dict[tuple[str, str, str], int] = {}  # (backend, kind, prompt|completion)
        self.rate_limited: dict[tuple[str, str], int] = {}  # (scope: ip|key, limit: rpm|streams)
        self.auth_failures = 0
        self.streams_aborted: dict[str, int] = {}  # reason: shutdown|timeout
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        try:
            ProcessCollector(registry=self.registry)  # RSS, CPU, open fds (Linux)
        except Exception:  # noqa: BLE001 - not every platform has /proc
            pass

    # -- recording (one call per request) -------------------------------------------------------
    def record(self, route: str, method: str, status: int, backend: str, kind: str, duration: float,
               ttft: float | None, tokens_in: int, tokens_out: int) -> None:
        key = (route, method, str(status), backend)
        self.requests[key] = self.requests.get(key, 0) + 1
        hkey = (route, backend)
        hist = self.duration.get(hkey)
        if hist is None:
            hist = self.duration[hkey] = _Histogram()
        hist.observe(duration)
        if ttft is not None:
            hist = self.ttft.get(hkey)
            if hist is None:
                hist = self.ttft[hkey] = _Histogram()
            hist.observe(ttft)
        if tokens_in or tokens_out:
            for what, n in (("prompt", tokens_in), ("completion", tokens_out)):
                tkey = (backend, kind, what)
                self.tokens[tkey] = self.tokens.get(tkey, 0) + n

    def limited(self, scope: str, limit: str) -> None:
        key = (scope, limit)
        self.rate_limited[key] = self.rate_limited.get(key, 0) + 1

    def aborted(self, reason: str) -> None:
        self.streams_aborted[reason] = self.streams_aborted.get(reason, 0) + 1

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterable[Any]:
        m = self.m
        requests = CounterMetricFamily("ollabridge_requests", "HTTP requests by route, method, status and backend",
                                       labels=["route", "method", "status", "backend"])
        for labels, n in m.requests.items():
            requests.add_metric(list(labels), n)
        yield requests
        for name, doc, table in (
                ("ollabridge_request_duration_seconds", "Time from request to the last byte of the answer",
                 m.duration),
                ("ollabridge_time_to_first_token_seconds", "Time from request to the first chunk from the backend",
                 m.ttft)):
            family = HistogramMetricFamily(name, doc, labels=["route", "backend"])
            for labels, hist in table.items():
                family.add_metric(list(labels), hist.buckets(), hist.sum)
            yield family
        tokens = CounterMetricFamily("ollabridge_tokens", "Tokens counted by backends (prompt and completion)",
                                     labels=["backend", "kind", "type"])
        for labels, n in m.tokens.items():
            tokens.add_metric(list(labels), n)
        yield tokens
        limited = CounterMetricFamily("ollabridge_rate_limited", "Requests refused with 429, by scope and limit",
                                      labels=["scope", "limit"])
        for labels, n in m.rate_limited.items():
            limited.add_metric(list(labels), n)
        yield limited
        yield CounterMetricFamily("ollabridge_auth_failures", "API requests refused with 401", value=m.auth_failures)
        aborted = CounterMetricFamily("ollabridge_requests_aborted",
                                      "Requests the gateway ended itself (shutdown, total timeout)", labels=["reason"])
        for reason, n in m.streams_aborted.items():
            aborted.add_metric([reason], n)
        yield aborted
        gw = m.gateway
        if gw is None:
            return
        yield GaugeMetricFamily("ollabridge_requests_in_flight", "API requests being served now",
                                value=len(gw.drain.inflight))
        yield GaugeMetricFamily("ollabridge_queue_waiting", "Requests waiting for a free backend slot",
                                value=gw.router.waiting)
        yield GaugeMetricFamily("ollabridge_draining", "1 while the gateway shuts down gracefully",
                                value=1 if gw.drain.draining else 0)
        by_caller = GaugeMetricFamily("ollabridge_queue_waiting_by_caller",
                                      "Requests waiting for a slot, by caller: key:<API key name>, local, or "
                                      "client-<hash of the address>; past 20 callers the rest as other",
                                      labels=["caller"])
        for caller, n in gw.views.queue()["by_caller"].items():
            by_caller.add_metric([caller], n)
        yield by_caller
        yield from _stream_counts(gw.router.stream_stats())
        stats = gw.hub.stats()
        yield GaugeMetricFamily("ollabridge_nodes_connected", "GPU nodes connected over the relay",
                                value=stats["nodes_connected"])
        yield CounterMetricFamily("ollabridge_relay_tokens", "Tokens relayed from GPU nodes",
                                  value=stats["tokens_relayed"])
        in_flight = GaugeMetricFamily("ollabridge_backend_in_flight", "Requests in flight per backend",
                                      labels=["backend", "kind"])
        tps = GaugeMetricFamily("ollabridge_backend_tokens_per_second",
                                "Generation speed of the last finished request per backend", labels=["backend", "kind"])
        up = GaugeMetricFamily("ollabridge_backend_up", "Whether the backend answered its last model-list fetch",
                               labels=["backend", "kind"])
        speed = GaugeMetricFamily("ollabridge_backend_model_tokens_per_second",
                                  "Moving average of a backend's tokens a second for a model (what routing chooses by)",
                                  labels=["backend", "kind", "model"])
        ttft = GaugeMetricFamily("ollabridge_backend_model_ttft_seconds",
                                 "Moving average of a backend's time to first chunk for a model",
                                 labels=["backend", "kind", "model"])
        for backend in list(gw.router.backends):
            labels = [backend.name, backend.kind]
            in_flight.add_metric(labels, backend.stats.in_flight)
            up.add_metric(labels, 1 if backend.reachable else 0)
            if backend.stats.last_tokens_per_s is not None:
                tps.add_metric(labels, backend.stats.last_tokens_per_s)
            for model, measured in list(backend.stats.speeds.items()):
                speed.add_metric([*labels, model], measured.tokens_per_s)
                ttft.add_metric([*labels, model], measured.ttft_s)
        yield in_flight
        yield tps
        yield up
        yield speed
        yield ttft


#: The router's stream counts (`Router.stream_stats`) that make one counter with a result label.
_BY_RESULT = {"resumed": ("ollabridge_stream_resumes", "resumed"),
              "resume_failed": ("ollabridge_stream_resumes", "failed"),
              "stall_probes_alive": ("ollabridge_stall_probes", "alive"),
              "stalls_lost": ("ollabridge_stall_probes", "lost"),
              "affinity_hits": ("ollabridge_affinity", "hit"),
              "affinity_yielded": ("ollabridge_affinity", "yielded"),
              "affinity_misses": ("ollabridge_affinity", "miss")}
_RESULT_DOCS = {"ollabridge_stream_resumes": "Streams lost mid-answer: resumed on another backend, or failed",
                "ollabridge_stall_probes": "GPU nodes pinged because a stream went silent: alive, or lost",
                "ollabridge_affinity": "Requests with a conversation: served by the backend holding its prefix "
                                       "(hit), elsewhere as it was full or slower (yielded), or with none (miss)"}
_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _stream_counts(streams: dict[str, Any]) -> Iterable[Any]:
    """The router's stream counts as counters: resumes and stall probes by result, and every other
    count it keeps (affinity hits, ...) as `ollabridge_<its name>_total`."""
    families = {name: CounterMetricFamily(name, doc, labels=["result"]) for name, doc in _RESULT_DOCS.items()}
    others = []
    for key, value in streams.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key in _BY_RESULT:
            name, result = _BY_RESULT[key]
            families[name].add_metric([result], value)
        elif _NAME.fullmatch(key):
            others.append(CounterMetricFamily(f"ollabridge_{key}", f"Streams: {key.replace('_', ' ')} "
                                              "(Router.stream_stats)", value=value))
    yield from families.values()
    yield from others
