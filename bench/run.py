"""OllaBridge benchmarks: the gateway vs LiteLLM's proxy vs the upstream directly, one command.

    python bench/run.py            # full run (~10 min on 2 cores): writes docs/benchmarks.md and
                                   # bench/results/latest.json
    python bench/run.py --quick    # smoke run in seconds (CI): bench/results/quick.json only

Everything runs as separate processes on loopback: the scripted upstream (bench/upstream.py), the
gateway (`python app.py`) in front of it, LiteLLM's proxy (`ollama_chat/` provider, installed on
first use into bench/.venv-litellm from bench/requirements-litellm.txt) in front of the same
upstream, and the load generator (bench/loadgen.py), one process per measurement. Each round
measures every target one after the other, so ratios compare numbers taken within seconds of each
other; each figure is the median of the rounds, with min and max.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/run.py`: the repo root's harness/ and ollabridge/

from harness.procs import free_port, running, stop  # noqa: E402
LITELLM_VENV = BENCH / ".venv-litellm"
LITELLM_REQS = BENCH / "requirements-litellm.txt"
PY = sys.executable

MSG = [{"role": "user", "content": "Say hello."}]
# LiteLLM refuses to start without a master key; with no database it checks it on every request, as
# a real deployment does. The load generator sends it to every target (the others ignore it).
MASTER_KEY = "sk-bench-7f3a9c2e51d84b06a1e9f0c3d5b7a2e4"


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


# -- processes ---------------------------------------------------------------------------------
@contextmanager
def black_hole():
    """A URL whose port accepts connections (the kernel's backlog does) and never answers: an
    upstream behind a tunnel whose far end is gone."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def service(name: str, args: list[str], ready: str, logdir: Path, env: dict[str, str] | None = None,
            timeout: float = 60.0):
    """`args` (a whole command) as a process until the block ends, its output in `logdir/<name>.log`."""
    return running(args, ready, env, logdir / f"{name}.log", timeout, program=None)


def gateway_env(port: int, upstream: str, data_dir: Path, ui: bool = False) -> dict[str, str]:
    env = {"HOST": "127.0.0.1", "PORT": str(port), "OLLAMA_BASE_URL": upstream,
           "OLLABRIDGE_ENGINE": "ollama", "OLLABRIDGE_DATA_DIR": str(data_dir),
           "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
           # The per-client guard (60 requests/min, 4 streams per address by default) is for the public
           # internet; a load test from one address would only measure 429s. LiteLLM runs unlimited too.
           "OLLABRIDGE_RATE_LIMIT_RPM": "0", "OLLABRIDGE_RATE_LIMIT_STREAMS": "0",
           "OLLABRIDGE_KEY_RATE_LIMIT_RPM": "0", "OLLABRIDGE_KEY_RATE_LIMIT_STREAMS": "0"}
    if not ui:
        env["OLLABRIDGE_UI"] = "0"
    return env


def black_holed_gateway(stack: ExitStack, ports: dict[str, int], upstream: str, logdir: Path,
                        args: argparse.Namespace) -> subprocess.Popen:
    """A second gateway like the first but for one extra upstream (OLLABRIDGE_UPSTREAMS) that is a
    black hole, at ports["gateway_blackhole"], until `stack` closes. Ready once it serves at all (its
    /health asks every backend, and waits out the black hole's timeout)."""
    port = ports["gateway_blackhole"] = free_port()
    hole = stack.enter_context(black_hole())
    return stack.enter_context(service(
        "gateway-blackhole", [PY, args.gateway_app], f"http://127.0.0.1:{port}/openapi.json", logdir,
        env={**gateway_env(port, upstream, logdir / "gateway-blackhole-data"), "OLLABRIDGE_UPSTREAMS": hole,
             **dict(kv.split("=", 1) for kv in args.gateway_env)}))


def ensure_litellm(install: bool) -> Path | None:
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    if not install:
        return None
    log(f"installing LiteLLM into {LITELLM_VENV} (once) ...")
    subprocess.run([PY, "-m", "venv", str(LITELLM_VENV)], check=True)
    subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "-r", str(LITELLM_REQS)], check=True)
    return exe


def litellm_version() -> str | None:
    py = LITELLM_VENV / "bin" / "python"
    if not py.exists():
        return None
    out = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or None


def litellm_config(path: Path, upstream: str) -> None:
    lines = ["model_list:"]
    for model in ("fast", "burst", "rate", "drip", "rate_quick", "drip_quick"):
        lines += [f"  - model_name: {model}", "    litellm_params:", f"      model: ollama_chat/{model}",
                  f"      api_base: {upstream}"]
    lines += ["litellm_settings:", "  telemetry: false", "  drop_params: true",
              "general_settings:", f"  master_key: {MASTER_KEY}"]
    path.write_text("\n".join(lines) + "\n")


def loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run([PY, str(BENCH / "loadgen.py"), json.dumps(spec)], capture_output=True, text=True,
                         timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout)


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process and its children so far."""
    if pid is None:
        return 0.0
    try:
        proc = psutil.Process(pid)
        total = 0.0
        for p in [proc, *proc.children(recursive=True)]:
            t = p.cpu_times()
            total += t.user + t.system
        return total
    except psutil.Error:
        return 0.0


class RSSSampler:
    """Peak resident memory of a process (and its children) while a block runs."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.before = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
            return sum(p.memory_info().rss for p in procs)
        except psutil.Error:
            return 0

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> "RSSSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.after = self._rss()


# -- statistics ----------------------------------------------------------------------------------
def agg(values: list[float | None]) -> dict[str, Any] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "rounds": vals}


def med(values: list[float | None]) -> float | None:
    a = agg(values)
    return a["median"] if a else None


# -- the figures --------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace, ports: dict[str, int], has_litellm: bool,
                 pids: dict[str, int]) -> None:
        self.args = args
        self.pids = pids
        self.quick = args.quick
        self.ports = ports
        self.has_litellm = has_litellm

    def targets(self, litellm: bool = True) -> list[tuple[str, int, str, bool]]:
        """(name, port, path, sse) for each system under test."""
        out = [("direct", self.ports["upstream"], "/api/chat", False),
               ("gateway", self.ports["gateway"], "/v1/chat/completions", True),
               ("gateway_native", self.ports["gateway"], "/ollama/api/chat", False)]
        if litellm and self.has_litellm:
            out.append(("litellm", self.ports["litellm"], "/v1/chat/completions", True))
        return out

    def measure(self, name: str, spec: dict[str, Any], count_key: str) -> dict[str, Any]:
        """Run one load generator and charge the proxy's CPU time to each request it served."""
        pid = self.pids.get(name) or self.pids.get(name.split("_", 1)[0])  # gateway_native, _messages: the gateway
        before = cpu_seconds(pid)
        res = loadgen(spec)
        used = cpu_seconds(pid) - before
        served = res.get(count_key) or 0
        res["cpu_us_per_request"] = used / served * 1e6 if pid and served else None
        return res

    def api_targets(self) -> list[tuple[str, int, str, bool]]:
        """Figure 1's extra rows: the Anthropic and Responses families, on the gateway and on LiteLLM."""
        out = [("gateway_messages", self.ports["gateway"], "/v1/messages", True),
               ("gateway_responses", self.ports["gateway"], "/v1/responses", True)]
        if self.has_litellm:
            out += [("litellm_messages", self.ports["litellm"], "/v1/messages", True),
                    ("litellm_responses", self.ports["litellm"], "/v1/responses", True)]
        return out

    @staticmethod
    def body(name: str, model: str, stream: bool) -> dict[str, Any]:
        """The same chat in each target's wire family."""
        if name.endswith("_messages"):
            return {"model": model, "max_tokens": 64, "messages": MSG, "stream": stream}
        if name.endswith("_responses"):
            return {"model": model, "input": MSG, "stream": stream}
        return {"model": model, "messages": MSG, "stream": stream}

    def blackhole_targets(self) -> list[tuple[str, int, str, bool]]:
        """The gateway with a black-holed upstream configured (figure 1), when it runs."""
        port = self.ports.get("gateway_blackhole")
        return [("gateway_blackhole", port, "/v1/chat/completions", True)] if port else []

    def fig1_latency(self) -> dict[str, Any]:
        n = 50 if self.quick else 500
        rounds: list[dict[str, Any]] = []
        for r in range(self.args.rounds):
            row = {}
            for name, port, path, _ in self.targets() + self.api_targets() + self.blackhole_targets():
                row[name] = self.measure(name, {"mode": "latency", "port": port, "path": path, "n": n,
                                                "warmup": 20, "body": self.body(name, "fast", False)}, "all_requests")
            rounds.append(row)
            log(f"  fig1 round {r + 1}: " + ", ".join(f"{k} p50 {v['p50_us']:.0f}us" for k, v in row.items()))
        out: dict[str, Any] = {"requests_per_round": n, "absolute_us": {}}
        for name in rounds[0]:
            out["absolute_us"][name] = {q: agg([rd[name][f"{q}_us"] for rd in rounds]) for q in ("p50", "p99")}
            out["absolute_us"][name]["errors"] = sum(rd[name]["errors"] for rd in rounds)
            out["absolute_us"][name]["cpu_us_per_request"] = agg([rd[name]["cpu_us_per_request"] for rd in rounds])
        added = {}
        for name in rounds[0]:
            if name == "direct":
                continue
            added[name] = {q: agg([rd[name][f"{q}_us"] - rd["direct"][f"{q}_us"] for rd in rounds])
                           for q in ("p50", "p99")}
        out["added_us"] = added
        if "gateway_blackhole" in rounds[0]:  # the same gateway plus a black-holed upstream, per round
            out["blackhole_minus_gateway_p50_us"] = agg([rd["gateway_blackhole"]["p50_us"] - rd["gateway"]["p50_us"]
                                                         for rd in rounds])
            out["blackhole_max_us"] = agg([rd["gateway_blackhole"]["max_us"] for rd in rounds])
        if "litellm" in rounds[0]:
            out["gateway_over_litellm_added_p50"] = agg(
                [(rd["gateway"]["p50_us"] - rd["direct"]["p50_us"]) /
                 max(rd["litellm"]["p50_us"] - rd["direct"]["p50_us"], 1e-9) for rd in rounds])
        return out

    def fig2_throughput(self) -> dict[str, Any]:
        duration = 1.0 if self.quick else 5.0
        rounds = []
        for r in range(self.args.rounds):
            row = {}
            for name, port, path, _ in self.targets():
                row[name] = self.measure(name, {"mode": "throughput", "port": port, "path": path,
                                                "concurrency": 32, "duration": duration,
                                                "warmup": 0.5 if self.quick else 1.0,
                                                "body": self.body(name, "fast", False)}, "all_requests")
            rounds.append(row)
            log(f"  fig2 round {r + 1}: " + ", ".join(f"{k} {v['rps']:.0f} rps" for k, v in row.items()))
        out: dict[str, Any] = {"concurrency": 32, "seconds_per_round": duration, "rps": {}, "errors": {},
                               "cpu_us_per_request": {}}
        for name in rounds[0]:
            out["rps"][name] = agg([rd[name]["rps"] for rd in rounds])
            out["cpu_us_per_request"][name] = agg([rd[name]["cpu_us_per_request"] for rd in rounds])
            out["errors"][name] = sum(rd[name]["errors"] for rd in rounds)
        out["gateway_over_direct"] = agg([rd["gateway"]["rps"] / rd["direct"]["rps"] for rd in rounds])
        if "litellm" in rounds[0]:
            out["gateway_over_litellm"] = agg([rd["gateway"]["rps"] / max(rd["litellm"]["rps"], 1e-9)
                                               for rd in rounds])
        return out

    def fig3_streaming(self) -> dict[str, Any]:
        n_ttft = 20 if self.quick else 100
        rounds = []
        for r in range(self.args.rounds):
            row: dict[str, Any] = {}
            for name, port, path, sse in self.targets():
                row[name] = self.stream_figures(name, port, path, sse)
            rounds.append(row)
            log(f"  fig3 round {r + 1}: " + ", ".join(
                f"{k} ttft {v['ttft_p50_us']:.0f}us paced {v['paced_chunks_per_s']:.0f}/s "
                f"burst {v['burst_chunks_per_s']:.0f}/s" for k, v in row.items()))
        out: dict[str, Any] = {"ttft_requests_per_round": n_ttft, "absolute": {}, "added_ttft_us": {},
                               "paced_over_direct": {}, "burst_over_direct": {},
                               "paced_rate": self.paced_rate}
        for name in rounds[0]:
            out["absolute"][name] = {k: agg([rd[name][k] for rd in rounds])
                                     for k in ("ttft_p50_us", "ttft_p99_us", "paced_chunks_per_s",
                                               "burst_chunks_per_s", "cpu_us_per_chunk")}
            out["absolute"][name]["errors"] = sum(rd[name]["errors"] for rd in rounds)
            if name == "direct":
                continue
            out["added_ttft_us"][name] = agg([rd[name]["ttft_p50_us"] - rd["direct"]["ttft_p50_us"]
                                              for rd in rounds])
            out["paced_over_direct"][name] = agg([rd[name]["paced_chunks_per_s"] /
                                                  rd["direct"]["paced_chunks_per_s"] for rd in rounds])
            out["burst_over_direct"][name] = agg([rd[name]["burst_chunks_per_s"] /
                                                  rd["direct"]["burst_chunks_per_s"] for rd in rounds])
        return out

    def stream_figures(self, name: str, port: int, path: str, sse: bool) -> dict[str, Any]:
        """Time to first token, a paced stream's chunks/s and a burst stream's chunks/s on one target."""
        rate_model = "rate_quick" if self.quick else "rate"
        ttft = loadgen({"mode": "stream", "port": port, "path": path, "sse": sse,
                        "n": 20 if self.quick else 100, "body": self.body(name, "fast", True)})
        paced = loadgen({"mode": "stream", "port": port, "path": path, "sse": sse, "n": 1, "warmup": 0,
                         "body": self.body(name, rate_model, True)})
        burst = self.measure(name, {"mode": "stream", "port": port, "path": path, "sse": sse,
                                    "n": 2 if self.quick else 5, "warmup": 1,
                                    "body": self.body(name, "burst", True)}, "all_chunks")
        return {"ttft_p50_us": ttft["ttft"]["p50_us"], "ttft_p99_us": ttft["ttft"]["p99_us"],
                "paced_chunks_per_s": paced["chunks_per_s"], "paced_chunks": paced["chunks"],
                "burst_chunks_per_s": burst["chunks_per_s"], "cpu_us_per_chunk": burst["cpu_us_per_request"],
                "errors": ttft["errors"] + paced["errors"] + burst["errors"]}

    @property
    def paced_rate(self) -> str:
        return "100 chunks at 500/s" if self.quick else "500 chunks at 500/s"

    def fig4_many(self, gateway_pid: int, upstream_pid: int) -> dict[str, Any]:
        streams = self.args.streams or (100 if self.quick else 1000)
        chunks = 10 if self.quick else 100
        model = "drip_quick" if self.quick else "drip"
        rounds = []
        for r in range(self.args.many_rounds):
            row = {}
            for name, port, path, sse in self.targets(litellm=False):
                if name == "gateway_native":
                    continue
                spec = {"mode": "many", "port": port, "path": path, "sse": sse, "streams": streams,
                        "ramp": 0.5 if self.quick else 2.0, "expected_chunks": chunks,
                        "body": self.body(name, model, True)}
                up0 = cpu_seconds(upstream_pid)
                if name == "gateway":
                    cpu0 = cpu_seconds(gateway_pid)
                    with RSSSampler(gateway_pid) as rss:
                        res = loadgen(spec)
                    res["cpu_us_per_chunk"] = (cpu_seconds(gateway_pid) - cpu0) / (streams * chunks) * 1e6
                    res["cpu_cores_busy"] = (cpu_seconds(gateway_pid) - cpu0) / res["seconds"]
                    res["rss_before_mb"] = rss.before / 2**20
                    res["rss_peak_mb"] = rss.peak / 2**20
                    res["rss_after_mb"] = rss.after / 2**20
                else:
                    res = loadgen(spec)
                # The harness shares the cores: its own CPU per chunk (upstream + load generator).
                res["harness_cpu_us_per_chunk"] = (cpu_seconds(upstream_pid) - up0 + res.get("cpu_s", 0.0)) \
                    / (streams * chunks) * 1e6
                row[name] = res
            rounds.append(row)
            log(f"  fig4 round {r + 1}: " + ", ".join(
                f"{k} gap p99 {v['gap']['p99_us'] / 1000:.1f}ms errors {v['errors']}" for k, v in row.items())
                + f", gateway RSS peak {row['gateway']['rss_peak_mb']:.0f} MB")
        g = [rd["gateway"] for rd in rounds]
        d = [rd["direct"] for rd in rounds]
        return {"streams": streams, "chunks_per_stream": chunks, "rate_per_stream": 20,
                "gap_p50_ms": {"gateway": agg([x["gap"]["p50_us"] / 1000 for x in g]),
                               "direct": agg([x["gap"]["p50_us"] / 1000 for x in d])},
                "gap_p99_ms": {"gateway": agg([x["gap"]["p99_us"] / 1000 for x in g]),
                               "direct": agg([x["gap"]["p99_us"] / 1000 for x in d])},
                "gap_max_ms": {"gateway": agg([x["gap"]["max_us"] / 1000 for x in g]),
                               "direct": agg([x["gap"]["max_us"] / 1000 for x in d])},
                "gap_steady_p99_ms": {"gateway": agg([x["gap_steady"]["p99_us"] / 1000 for x in g]),
                                      "direct": agg([x["gap_steady"]["p99_us"] / 1000 for x in d])},
                "added_gap_p99_ms": agg([(x["gap"]["p99_us"] - y["gap"]["p99_us"]) / 1000 for x, y in zip(g, d)]),
                "ttft_p99_ms": {"gateway": agg([x["ttft"]["p99_us"] / 1000 for x in g]),
                                "direct": agg([x["ttft"]["p99_us"] / 1000 for x in d])},
                "errors": {"gateway": sum(x["errors"] for x in g), "direct": sum(x["errors"] for x in d)},
                "error_kinds": {"gateway": [x["error_kinds"] for x in g], "direct": [x["error_kinds"] for x in d]},
                "error_samples": {"gateway": [x.get("error_samples") for x in g],
                                  "direct": [x.get("error_samples") for x in d]},
                "gateway_cpu_us_per_chunk": agg([x["cpu_us_per_chunk"] for x in g]),
                "gateway_cpu_cores_busy": agg([x["cpu_cores_busy"] for x in g]),
                "harness_cpu_us_per_chunk": {"gateway": agg([x["harness_cpu_us_per_chunk"] for x in g]),
                                             "direct": agg([x["harness_cpu_us_per_chunk"] for x in d])},
                "gateway_rss_mb": {"before": agg([x["rss_before_mb"] for x in g]),
                                   "peak": agg([x["rss_peak_mb"] for x in g]),
                                   "after": agg([x["rss_after_mb"] for x in g])}}

    def fig7_cold_start(self, upstream: str, logdir: Path) -> dict[str, Any]:
        rounds = 1 if self.quick else self.args.rounds
        variants = {"ui_off": False} if self.quick else {"ui_off": False, "ui_default": True}
        res: dict[str, list[float]] = {k: [] for k in variants}
        res["gradio_import"] = []
        for r in range(rounds):
            for variant, ui in variants.items():
                res[variant].append(self._cold_start(upstream, logdir, ui))
            t0 = time.perf_counter()
            subprocess.run([PY, "-c", "import gradio"], cwd=ROOT, check=True,
                           env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
            res["gradio_import"].append(time.perf_counter() - t0)
            log(f"  fig7 round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in res.items()))
        out: dict[str, Any] = {"seconds": {k: agg(v) for k, v in res.items()}}
        for variant in variants:
            out[f"{variant}_over_gradio_import"] = agg([a / b for a, b in zip(res[variant], res["gradio_import"])])
        return out

    def _cold_start(self, upstream: str, logdir: Path, ui: bool) -> float:
        port = free_port()
        data = Path(tempfile.mkdtemp(prefix="ob-cold-"))
        env = {**os.environ, **gateway_env(port, upstream, data, ui=ui)}
        if ui:
            env.pop("OLLABRIDGE_UI", None)
        url = f"http://127.0.0.1:{port}/health"
        with open(logdir / "cold-start.log", "ab") as out:
            t0 = time.perf_counter()
            proc = subprocess.Popen([PY, "app.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                with httpx.Client(timeout=5.0) as client:
                    while True:
                        if proc.poll() is not None:
                            raise RuntimeError(f"app.py exited with {proc.returncode} (see cold-start.log)")
                        try:
                            if client.get(url).status_code == 200:
                                return time.perf_counter() - t0
                        except httpx.HTTPError:
                            pass
                        time.sleep(0.01)
            finally:
                stop(proc)
                shutil.rmtree(data, ignore_errors=True)


# -- figure 6: the in-box engine vs bare llama-cpp-python ----------------------------------------
ENGINE_PROMPT = "The history of the city begins in the year"


def engine_available() -> str | None:
    """Why figure 6 cannot run, or None when it can."""
    if not (ROOT / "ollabridge" / "engine" / "__main__.py").exists():
        return "the in-box engine (`python -m ollabridge.engine`) is not in the tree"
    if subprocess.run([PY, "-c", "import llama_cpp"], capture_output=True).returncode != 0:
        return "llama-cpp-python is not installed (the inbox extra)"
    return None


def engine_stream_rate(url: str, tokens: int) -> tuple[float, float]:
    """Tokens/s of one engine stream between its first and last chunk (prompt evaluation excluded),
    and the rate the engine itself reports (eval_count / eval_duration)."""
    body = {"model": "gemma3:270m", "prompt": ENGINE_PROMPT, "raw": True, "stream": True,
            "options": {"num_predict": tokens, "temperature": 0, "top_k": 1, "seed": 1}}
    stamps: list[float] = []
    count = 0
    with httpx.Client(timeout=120) as client, client.stream("POST", f"{url}/api/generate", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line:
                continue
            obj = json.loads(line)
            if obj.get("response"):
                stamps.append(time.perf_counter())
            if obj.get("done"):
                count = int(obj.get("eval_count") or len(stamps))
                reported = count / (obj["eval_duration"] / 1e9) if obj.get("eval_duration") else 0.0
    if len(stamps) < 2:
        raise RuntimeError(f"the engine streamed {len(stamps)} chunks")
    # eval_count tokens arrived over (first chunk .. last chunk): count-1 intervals.
    return (count - 1) / (stamps[-1] - stamps[0]), reported


def _bare_rate(model_path: str, tokens: int, threads: int, ctx: int) -> float:
    out = subprocess.run([PY, str(BENCH / "engine_bare.py"), json.dumps(
        {"model_path": model_path, "prompt": ENGINE_PROMPT, "tokens": tokens, "threads": threads,
         "ctx": ctx, "repeats": 2})], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"engine_bare failed: {out.stderr[-2000:]}")
    return max(json.loads(out.stdout)["all"])


def fig6_engine(quick: bool, rounds: int, logdir: Path, threads: int | None) -> dict[str, Any]:
    """The engine as shipped (or at `threads`) against bare llama-cpp-python decoding on the same number
    of threads, and against bare llama-cpp-python on every core (the most this machine gives)."""
    from ollabridge.engine.model import default_cache_dir, resolve_model

    cores = os.cpu_count() or 1
    decode_threads = threads or cores  # the engine's default (ollabridge/engine/llm.py)
    model_path = str(resolve_model("", default_cache_dir()).path)
    tokens, ctx = (24 if quick else 128), 2048
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    engine, reported, bare, bare_all = [], [], [], []
    args = [PY, "-m", "ollabridge.engine", "--host", "127.0.0.1", "--port", str(port), "--ctx", str(ctx),
            "--log-level", "warning"] + (["--threads", str(threads)] if threads else [])
    with service("engine", args, f"{url}/api/version", logdir, timeout=300):
        engine_stream_rate(url, 8)  # warm
        # Paired rounds: engine then bare, each its best of 2 runs (contention from other work on a
        # shared machine only ever slows a run down); the ratio is taken within each round.
        for _ in range(rounds):
            best = max(engine_stream_rate(url, tokens) for _ in range(2))
            engine.append(best[0])
            reported.append(best[1])
            bare.append(_bare_rate(model_path, tokens, decode_threads, ctx))
            bare_all.append(bare[-1] if decode_threads == cores else _bare_rate(model_path, tokens, cores, ctx))
    log(f"  fig6: engine {[round(x, 1) for x in engine]} tok/s, bare {[round(x, 1) for x in bare]}, "
        f"bare on {cores} cores {[round(x, 1) for x in bare_all]} tok/s")
    return {"tokens": tokens, "threads": decode_threads, "cores": cores, "model": "gemma3:270m (bundled)",
            "engine_tokens_per_s": agg(engine), "engine_reported_tokens_per_s": agg(reported),
            "bare_tokens_per_s": agg(bare), "ratio": agg([e / b for e, b in zip(engine, bare)]),
            "bare_all_cores_tokens_per_s": agg(bare_all),
            "ratio_all_cores": agg([e / b for e, b in zip(engine, bare_all)])}


# -- figure 5: through a node agent over the relay vs the gateway's own Ollama backend ---------
RELAY_ADMIN = "bench-admin-token-5b0c1d2e3f"


def relay_available() -> str | None:
    main = ROOT / "ollabridge" / "__main__.py"
    if not (main.exists() and "node" in main.read_text()):
        return "the relay's node agent (`python -m ollabridge node --cloud URL`) is not in the tree"
    return None


def fig5_relay(bench: "Bench", upstream: str, logdir: Path) -> dict[str, Any]:
    """A second gateway whose only backend with the models is a paired node agent on the same upstream."""
    port = free_port()
    gw = f"http://127.0.0.1:{port}"
    dead = f"http://127.0.0.1:{free_port()}"  # its own Ollama is down: every request goes to the node
    env = {**gateway_env(port, dead, logdir / "relay-gateway-data"), "OLLABRIDGE_ADMIN_TOKEN": RELAY_ADMIN,
           "OLLABRIDGE_DEVICE_INTERVAL": "0.2", "OLLABRIDGE_DEVICE_RATE": "1000"}
    creds = logdir / "node-credentials.json"
    with ExitStack() as stack:
        stack.enter_context(service("relay-gateway", [PY, "app.py"], f"{gw}/health", logdir, env=env))
        flow = httpx.post(f"{gw}/device/start", json={"name": "bench-node"}).json()
        httpx.post(f"{gw}/device/approve", json={"user_code": flow["user_code"]},
                   headers={"Authorization": f"Bearer {RELAY_ADMIN}"}).raise_for_status()
        token = httpx.post(f"{gw}/device/token", json={"device_code": flow["device_code"]})
        token.raise_for_status()
        creds.write_text(json.dumps({gw: {**token.json(), "cloud": gw}}))
        os.chmod(creds, 0o600)
        stack.enter_context(service(
            "node", [PY, "-m", "ollabridge", "node", "--cloud", gw, "--ollama", upstream, "--name", "bench-node",
                     "--slots", "8", "--credentials", str(creds)],
            f"{gw}/v1/models/fast:latest", logdir, env={"OLLABRIDGE_LOG_LEVEL": "warning"}, timeout=60))
        rounds = []
        for r in range(bench.args.rounds):
            row = {}
            for name, port_ in (("gateway", bench.ports["gateway"]), ("relay", port)):
                row[name] = bench.stream_figures(name, port_, "/v1/chat/completions", True)
            rounds.append(row)
            log(f"  fig5 round {r + 1}: " + ", ".join(
                f"{k} ttft {v['ttft_p50_us']:.0f}us paced {v['paced_chunks_per_s']:.0f}/s "
                f"burst {v['burst_chunks_per_s']:.0f}/s" for k, v in row.items()))
    return {"paced_rate": bench.paced_rate,
            "absolute": {n: {k: agg([rd[n][k] for rd in rounds])
                             for k in ("ttft_p50_us", "paced_chunks_per_s", "burst_chunks_per_s")}
                         for n in ("gateway", "relay")},
            "errors": sum(rd[n]["errors"] for rd in rounds for n in rd),
            "added_ttft_us": agg([rd["relay"]["ttft_p50_us"] - rd["gateway"]["ttft_p50_us"] for rd in rounds]),
            "paced_over_gateway": agg([rd["relay"]["paced_chunks_per_s"] / rd["gateway"]["paced_chunks_per_s"]
                                       for rd in rounds]),
            "burst_over_gateway": agg([rd["relay"]["burst_chunks_per_s"] / rd["gateway"]["burst_chunks_per_s"]
                                       for rd in rounds])}


def todo(reason: str) -> dict[str, Any]:
    return {"status": "todo", "reason": reason}


# -- report ---------------------------------------------------------------------------------------
def fmt(a: dict[str, Any] | None, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    if not a:
        return "n/a"
    m, lo, hi = (a["median"] * scale, a["min"] * scale, a["max"] * scale)
    return f"{m:.{digits}f}{unit} ({lo:.{digits}f}–{hi:.{digits}f})"


def evaluate(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target: the measured value, the target, met or not."""
    f = res["figures"]
    rows: list[dict[str, Any]] = []

    def row(fig: str, what: str, value: str, target: str, met: bool | None) -> None:
        rows.append({"figure": fig, "metric": what, "value": value, "target": target, "met": met})

    f1 = f.get("1_added_latency", {})
    if f1.get("status") == "measured":
        a = f1["added_us"]
        g50 = a["gateway"]["p50"]
        row("1", "added latency p50, gateway (OpenAI API) − direct", fmt(g50, 1e-3, 3, " ms"), "≤ 1.0 ms",
            g50["median"] <= 1000)
        row("1", "added latency p99, gateway − direct", fmt(a["gateway"]["p99"], 1e-3, 3, " ms"), "—", None)
        row("1", "added latency p50, gateway native /ollama/api/chat − direct",
            fmt(a["gateway_native"]["p50"], 1e-3, 3, " ms"), "—", None)
        for family, route in (("messages", "/v1/messages (Anthropic)"), ("responses", "/v1/responses")):
            if f"gateway_{family}" in a:
                v = a[f"gateway_{family}"]["p50"]
                row("1", f"added latency p50, gateway {route} − direct", fmt(v, 1e-3, 3, " ms"), "≤ 1.0 ms",
                    v["median"] <= 1000)
            if f"litellm_{family}" in a:
                row("1", f"added latency p50, LiteLLM {route} − direct",
                    fmt(a[f"litellm_{family}"]["p50"], 1e-3, 3, " ms"), "—", None)
        if "litellm" in a:
            row("1", "added latency p50, LiteLLM − direct", fmt(a["litellm"]["p50"], 1e-3, 3, " ms"), "—", None)
            row("1", "added latency p99, LiteLLM − direct", fmt(a["litellm"]["p99"], 1e-3, 3, " ms"), "—", None)
            r = f1["gateway_over_litellm_added_p50"]
            row("1", "gateway added p50 ÷ LiteLLM added p50", fmt(r, 1, 3), "≤ 0.25", r["median"] <= 0.25)
        else:
            row("1", "gateway added p50 ÷ LiteLLM added p50", "LiteLLM not run", "≤ 0.25", None)
        if "blackhole_minus_gateway_p50_us" in f1:
            d, g = f1["blackhole_minus_gateway_p50_us"], f1["absolute_us"]["gateway"]["p50"]
            noise = max(100.0, g["max"] - g["min"])  # the plain gateway's own spread over the rounds
            row("1", "added latency p50 with one black-holed upstream configured, − without",
                fmt(d, 1e-3, 3, " ms"), f"≈ 0: within noise (the gateway's p50 spread, {noise / 1000:.3f} ms)",
                abs(d["median"]) <= noise)
            worst = f1["blackhole_max_us"]["max"]
            row("1", "slowest request of any round with the black-holed upstream (its list fetch times out "
                "after 5 s, in the background)", f"{worst / 1000:.1f} ms", "< 1 s", worst < 1e6)
    f2 = f.get("2_throughput", {})
    if f2.get("status") == "measured":
        for name, v in f2["rps"].items():
            row("2", f"requests/s at 32 clients, {name}", fmt(v, 1, 0), "—", None)
        row("2", "gateway ÷ direct requests/s", fmt(f2["gateway_over_direct"], 1, 3), "—", None)
        for name, v in f2["cpu_us_per_request"].items():
            if v:
                row("2", f"proxy CPU time per request, {name}", fmt(v, 1e-3, 3, " ms"), "—", None)
        if "gateway_over_litellm" in f2:
            r = f2["gateway_over_litellm"]
            row("2", "gateway ÷ LiteLLM requests/s", fmt(r, 1, 2), "≥ 3", r["median"] >= 3)
        else:
            row("2", "gateway ÷ LiteLLM requests/s", "LiteLLM not run", "≥ 3", None)
        row("2", "errors (all targets)", str(sum(f2["errors"].values())), "0", sum(f2["errors"].values()) == 0)
    f3 = f.get("3_streaming", {})
    if f3.get("status") == "measured":
        for name, v in f3["added_ttft_us"].items():
            row("3", f"added time to first token p50, {name}", fmt(v, 1e-3, 3, " ms"), "—", None)
        for name, v in f3["paced_over_direct"].items():
            row("3", f"chunks/s ÷ direct, {name} ({f3['paced_rate']})", fmt(v, 1, 3),
                "≥ 0.9" if name == "gateway" else "—", v["median"] >= 0.9 if name == "gateway" else None)
        for name, v in f3["absolute"].items():
            row("3", f"max chunks/s one stream carries (instant upstream), {name}",
                fmt(v["burst_chunks_per_s"], 1, 0), "—", None)
        for name, v in f3["absolute"].items():
            if v.get("cpu_us_per_chunk"):
                row("3", f"proxy CPU time per streamed chunk, {name}", fmt(v["cpu_us_per_chunk"], 1, 1, " µs"),
                    "—", None)
    f4 = f.get("4_many_streams", {})
    if f4.get("status") == "measured":
        n = f4["streams"]
        row("4", f"{n} streams × 20 chunks/s: p99 gap, gateway / direct",
            f"{fmt(f4['gap_p99_ms']['gateway'], 1, 1, ' ms')} / {fmt(f4['gap_p99_ms']['direct'], 1, 1, ' ms')}",
            "—", None)
        if "gap_steady_p99_ms" in f4:
            st = f4["gap_steady_p99_ms"]
            row("4", f"{n} streams: p99 gap once all are open (from 1 s after the ramp), gateway / direct",
                f"{fmt(st['gateway'], 1, 1, ' ms')} / {fmt(st['direct'], 1, 1, ' ms')}", "—", None)
        v = f4["added_gap_p99_ms"]
        row("4", f"{n} streams: p99 added gap between chunks", fmt(v, 1, 1, " ms"), "≤ 50 ms",
            v["median"] <= 50)
        row("4", f"{n} streams: errors, gateway (direct)",
            f"{f4['errors']['gateway']} ({f4['errors']['direct']})", "0", f4["errors"]["gateway"] == 0)
        row("4", f"{n} streams: gateway CPU per chunk (cores busy)",
            f"{fmt(f4['gateway_cpu_us_per_chunk'], 1, 1, ' µs')} ({f4['gateway_cpu_cores_busy']['median']:.2f})",
            "—", None)
        if "harness_cpu_us_per_chunk" in f4:
            h = f4["harness_cpu_us_per_chunk"]
            row("4", f"{n} streams: harness CPU per chunk (upstream + load generator), gateway run / direct run",
                f"{fmt(h['gateway'], 1, 1, ' µs')} / {fmt(h['direct'], 1, 1, ' µs')}", "—", None)
        row("4", f"{n} streams: p99 time to first chunk, gateway / direct",
            f"{fmt(f4['ttft_p99_ms']['gateway'], 1, 1, ' ms')} / {fmt(f4['ttft_p99_ms']['direct'], 1, 1, ' ms')}",
            "—", None)
        rss = f4["gateway_rss_mb"]
        row("4", f"{n} streams: gateway RSS, fresh → peak (after the last round)",
            f"{rss['before']['rounds'][0]:.0f} → {rss['peak']['max']:.0f} MB ({rss['after']['rounds'][-1]:.0f} MB)",
            "—", None)
    f5 = f.get("5_relay", {})
    if f5.get("status") == "measured":
        row("5", "relay − gateway's own backend: added time to first token p50",
            fmt(f5["added_ttft_us"], 1e-3, 3, " ms"), "≤ 2 ms", f5["added_ttft_us"]["median"] <= 2000)
        row("5", f"relay ÷ gateway's own backend: chunks/s ({f5['paced_rate']})", fmt(f5["paced_over_gateway"], 1, 3),
            "≥ 0.95", f5["paced_over_gateway"]["median"] >= 0.95)
        row("5", "max chunks/s one stream carries, relay / gateway's own backend",
            f"{fmt(f5['absolute']['relay']['burst_chunks_per_s'], 1, 0)} / "
            f"{fmt(f5['absolute']['gateway']['burst_chunks_per_s'], 1, 0)}", "—", None)
        row("5", "relay errors", str(f5["errors"]), "0", f5["errors"] == 0)
    for key, fig, what, target in (("5_relay", "5", "relay: chunks/s ÷ direct, added TTFT", "≥ 0.95, ≤ 2 ms"),
                                   ("6_engine", "6", "in-box engine tokens/s ÷ bare llama-cpp-python", "≥ 0.95")):
        v = f.get(key, {})
        if v.get("status") != "measured":
            row(fig, what, f"TODO: {v.get('reason', 'not measured')}", target, None)
    f7 = f.get("7_cold_start", {})
    if f7.get("status") == "measured":
        s = f7["seconds"]
        row("7", "bare `python -c \"import gradio\"`", fmt(s["gradio_import"], 1, 2, " s"), "—", None)
        for variant in ("ui_off", "ui_default"):
            if variant in s:
                label = "OLLABRIDGE_UI=0" if variant == "ui_off" else "UI as shipped"
                row("7", f"`python app.py` to /health 200, {label}", fmt(s[variant], 1, 2, " s"), "—", None)
                r = f7[f"{variant}_over_gradio_import"]
                row("7", f"cold start ÷ gradio import, {label}", fmt(r, 1, 2), "≤ 1.3", r["median"] <= 1.3)
    if "6_engine" in f and f["6_engine"].get("status") == "measured":
        e = f["6_engine"]
        row("6", f"tokens/s, in-box engine / bare llama-cpp-python ({e['tokens']} tokens, {e['threads']} threads)",
            f"{fmt(e['engine_tokens_per_s'], 1, 1)} / {fmt(e['bare_tokens_per_s'], 1, 1)}", "—", None)
        row("6", "in-box engine tokens/s as the engine reports it (eval_count / eval_duration)",
            fmt(e["engine_reported_tokens_per_s"], 1, 1), "—", None)
        row("6", f"in-box engine tokens/s ÷ bare llama-cpp-python, both decoding on {e['threads']} threads",
            fmt(e["ratio"], 1, 3), "≥ 0.95", e["ratio"]["median"] >= 0.95)
        if "ratio_all_cores" in e and e["threads"] != e.get("cores"):
            row("6", f"bare llama-cpp-python on all {e['cores']} cores (no server beside it); engine ÷ that",
                f"{fmt(e['bare_all_cores_tokens_per_s'], 1, 1)}; {fmt(e['ratio_all_cores'], 1, 3)}", "—", None)
    return rows


def markdown(res: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    m = res["meta"]
    mark = {True: "✅", False: "❌", None: ""}
    lines = ["# Benchmarks", "",
             "The gateway against LiteLLM's proxy and the upstream directly, every process on loopback on one "
             "machine. Reproduce with:", "", "```", "python bench/run.py          # full run, writes this file and "
             "bench/results/latest.json", "python bench/run.py --quick  # smoke run in seconds (CI)", "```", "",
             f"Measured {m['date']} at commit {m.get('commit') or '?'}"
             + (f" (+{m['uncommitted_files']} uncommitted files)" if m.get("uncommitted_files") else "")
             + f" on {m['cpus']} CPUs ({m['platform']}), Python {m['python']}, "
             f"LiteLLM {m['litellm'] or 'not run'}; load average before {m['load_before']}, after "
             f"{m['load_after']}. {m['rounds']} rounds per figure (figure 4: {m['many_rounds']}); "
             "each value is the median of the rounds, (min–max) in brackets; ratios are taken within each round.",
             "", "| # | metric | value | target | met |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['figure']} | {r['metric']} | {r['value']} | {r['target']} | {mark[r['met']]} |")
    lines += ["", "## How it is measured", "",
              "- **Upstream** (`bench/upstream.py`): a raw-asyncio Ollama API (on uvloop) with every reply pre-encoded; "
              "`fast` = 16 chunks at once, `burst` = 2,000 chunks at once, `rate` = 500 chunks at 500/s, "
              "`drip` = 100 chunks at 20/s. It is the *direct* target: the physical limit.",
              "- **Gateway**: `python app.py` with `OLLABRIDGE_ENGINE=ollama OLLABRIDGE_UI=0`, the per-client rate "
              "limits off (`OLLABRIDGE_RATE_LIMIT_RPM=0 OLLABRIDGE_RATE_LIMIT_STREAMS=0`: one load generator is "
              "one address), everything else as shipped (log level, access log, metrics), called on "
              "`/v1/chat/completions` (and `/ollama/api/chat` for the native passthrough row).",
              "- **Relay** (figure 5): a second gateway whose own Ollama is down, a node agent "
              "(`python -m ollabridge node`) paired by the device flow and serving from the same upstream; "
              "compared with the first gateway's own Ollama backend.",
              "- **In-box engine** (figure 6): `python -m ollabridge.engine` as shipped on the bundled Gemma 3 "
              "270M, `/api/generate` raw, greedy, against `bench/engine_bare.py` (bare llama-cpp-python, same "
              "model, threads, context and prompt); tokens/s between the first and the last token; rounds pair an "
              "engine and a bare measurement, each the best of 2 runs, and the ratio is taken per round.",
              "- **LiteLLM**: `litellm --config` with `ollama_chat/<model>` and `api_base` = the upstream, one "
              "worker, no database, installed by the harness into `bench/.venv-litellm` "
              "(`bench/requirements-litellm.txt`).",
              "- **Load generator** (`bench/loadgen.py`): its own process per measurement, a raw-asyncio (uvloop) "
              "HTTP/1.1 keep-alive client that timestamps every chunk on arrival.",
              "- Figure 1: sequential non-streaming requests on one connection, added = target − direct per round; "
              "the black-holed row is a second gateway, the same but for `OLLABRIDGE_UPSTREAMS` naming a port "
              "that accepts connections and never answers, minus the first gateway in the same round. "
              "Figure 2: 32 connections in a closed loop. Figure 3: time to first content chunk of `fast`; "
              "chunks/s of one `rate` stream (delivered vs the upstream's pace) and of one `burst` stream "
              "(what one stream can carry at most). Figure 4: 1,000 connections opened over 2 s, each a "
              "`drip` stream; gaps between consecutive content chunks at the client; RSS of the gateway "
              "process sampled every 0.2 s. Figure 7: wall time from spawning `python app.py` to the first "
              "`/health` 200, against `python -c \"import gradio\"`.",
              "", "Raw numbers per round: `bench/results/latest.json`.", ""]
    notes = res.get("notes")
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


BEGIN, END = "<!-- bench:begin (written by bench/run.py) -->", "<!-- bench:end -->"


def write_markdown(path: Path, generated: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the block between `begin` and `end` in `path` (appended when absent), keeping the
    hand-written text around it."""
    block = f"{begin}\n{generated.rstrip()}\n{end}"
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = old.rstrip() + ("\n\n" if old.strip() else "") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def save_results(result: dict[str, Any], json_path: Path, md: str, text: str, begin: str, end: str) -> None:
    """A side benchmark's end (bench/resume.py, bench/replicas.py): its JSON to `json_path`, its block
    `text` into the markdown file `md` (unless 'none'), the JSON on stdout."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    if md != "none":
        write_markdown(Path(md), text, begin, end)
    print(json.dumps(result, indent=2))


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run in seconds (CI)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--many-rounds", type=int, default=None)
    parser.add_argument("--streams", type=int, default=None, help="figure 4 concurrent streams")
    parser.add_argument("--litellm", choices=["auto", "yes", "no"], default="auto",
                        help="auto: install and run it (full), run it only if installed (quick)")
    parser.add_argument("--only", default="", help="comma list of figures to run, e.g. 1,2")
    parser.add_argument("--engine-threads", type=int, default=None,
                        help="llama.cpp threads for figure 6, engine and bare alike (default: the engine's own "
                             "default, every core)")
    parser.add_argument("--gateway-app", default="app.py",
                        help="the gateway's entry script (to measure a variant of app.py)")
    parser.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the gateway (experiments, e.g. OLLABRIDGE_LOG_LEVEL=warning)")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="only rebuild the table and markdown from a results JSON (no measuring)")
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    parser.add_argument("--md", type=Path, default=None, help="markdown output path")
    args = parser.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.many_rounds = args.many_rounds or (1 if args.quick else 3)
    out = args.out or (BENCH / "results" / ("quick.json" if args.quick else "latest.json"))
    md = args.md or (None if args.quick else ROOT / "docs" / "benchmarks.md")
    only = set(filter(None, args.only.split(",")))

    if args.render:
        res = json.loads(args.render.read_text())
        res["table"] = evaluate(res)
        args.render.write_text(json.dumps(res, indent=2) + "\n")
        if md is not None:
            write_markdown(md, markdown(res, res["table"]))
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    want_litellm = args.litellm == "yes" or (args.litellm == "auto" and not args.quick)
    exe = ensure_litellm(install=want_litellm) if args.litellm != "no" else None
    if args.litellm == "yes" and exe is None:
        raise SystemExit("LiteLLM could not be installed")

    res: dict[str, Any] = {"meta": {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                                    "quick": args.quick, "cpus": os.cpu_count(), "platform": platform.platform(),
                                    "python": platform.python_version(), "litellm": None,
                                    "load_before": loadavg(), "rounds": args.rounds,
                                    "many_rounds": args.many_rounds, "gateway_env": args.gateway_env,
                                    "gateway_app": args.gateway_app,
                                    "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                             capture_output=True, text=True).stdout.strip(),
                                    "uncommitted_files": len(subprocess.run(
                                        ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                                        text=True).stdout.splitlines())},
                           "figures": {}, "notes": []}
    ports = {"upstream": free_port(), "gateway": free_port(), "litellm": free_port()}
    upstream = f"http://127.0.0.1:{ports['upstream']}"
    logdir = Path(tempfile.mkdtemp(prefix="ollabridge-bench-"))
    log(f"logs in {logdir}")
    with ExitStack() as stack:
        up = stack.enter_context(service(
            "upstream", [PY, str(BENCH / "upstream.py"), "--port", str(ports["upstream"]),
                         "--script", "rate_quick=100@500", "--script", "drip_quick=10@20"],
            f"{upstream}/api/version", logdir))
        gw = stack.enter_context(service(
            "gateway", [PY, args.gateway_app], f"http://127.0.0.1:{ports['gateway']}/health", logdir,
            env={**gateway_env(ports["gateway"], upstream, logdir / "gateway-data"),
                 **dict(kv.split("=", 1) for kv in args.gateway_env)}))
        if exe is not None:
            cfg = logdir / "litellm.yaml"
            litellm_config(cfg, upstream)
            llm = stack.enter_context(service(
                "litellm", [str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(ports["litellm"]),
                            "--num_workers", "1"],
                f"http://127.0.0.1:{ports['litellm']}/health/liveliness", logdir,
                env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
                     "DISABLE_SCHEMA_UPDATE": "True"}, timeout=180))
            res["meta"]["litellm"] = litellm_version()
        else:
            res["notes"].append("LiteLLM was not run (not installed, quick mode or --litellm no): "
                                "its columns and ratios are absent.")
        pids = {"gateway": gw.pid}
        if not only or "1" in only:  # figure 1's black-holed row: see black_holed_gateway
            pids["gateway_blackhole"] = black_holed_gateway(stack, ports, upstream, logdir, args).pid
        if exe is not None:
            pids["litellm"] = llm.pid
        bench = Bench(args, ports, exe is not None, pids)
        figures = res["figures"]
        steps = [("1_added_latency", "1", bench.fig1_latency), ("2_throughput", "2", bench.fig2_throughput),
                 ("3_streaming", "3", bench.fig3_streaming),
                 ("4_many_streams", "4", lambda: bench.fig4_many(gw.pid, up.pid))]
        for key, num, fn in steps:
            if only and num not in only:
                continue
            log(f"figure {num} ...")
            figures[key] = {"status": "measured", **fn()}
        if not only or "5" in only:
            why = relay_available()
            if why:
                figures["5_relay"] = todo(why)
            else:
                log("figure 5 ...")
                figures["5_relay"] = {"status": "measured", **fig5_relay(bench, upstream, logdir)}
        if not only or "6" in only:
            why = engine_available()
            if why:
                figures["6_engine"] = todo(why)
            else:
                log("figure 6 ...")
                figures["6_engine"] = {"status": "measured",
                                       **fig6_engine(args.quick, 1 if args.quick else 3, logdir,
                                                                   args.engine_threads)}
        if not only or "7" in only:
            log("figure 7 ...")
            figures["7_cold_start"] = {"status": "measured", **bench.fig7_cold_start(upstream, logdir)}
    res["meta"]["load_after"] = loadavg()
    rows = evaluate(res)
    res["table"] = rows
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    text = markdown(res, rows)
    if md is not None:
        write_markdown(md, text)
    print(text)
    log(f"wrote {out}" + (f" and {md}" if md else "") + f"; process logs in {logdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
