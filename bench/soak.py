"""Soak: many clients for a while, mixing streamed and whole answers, while GPU nodes are killed
and restarted every few seconds. Everything on loopback, as separate processes.

    python bench/soak.py                          # 200 clients, 60 s; results into docs/benchmarks.md
    python bench/soak.py --seconds 5 --clients 20 --md none   # the CI form (tests/test_soak.py)

Setup: a gateway (`python app.py`) whose own Ollama is a scripted one (tests/fake_ollama.py), plus
`--nodes` node agents (`python -m ollabridge node`) each in front of its own scripted Ollama; all
serve the model `soak`. Nodes are preferred (priority 0), the gateway's Ollama takes the overflow.
Every `--kill-every` seconds one node agent gets SIGKILL and is started again a second later.

Each client loops: a random kind of request (SSE stream, whole /v1 answer, NDJSON stream, whole
native answer), checks the answer word for word, thinks a little, again. It reports requests,
errors by kind, streams cut (and whether each cut ended with a clean error event), and the
gateway's RSS at start, end and peak. A request a killed node was serving can only fail; the
target is that each such failure is a clean error (an SSE error event, an NDJSON error line, a 502
JSON error) and that nothing else fails. An error counts as caused by a kill only when it names
the lost node and that node was killed while the request was open; any other is the gateway's
(`errors_not_from_killed_nodes`, with a sample of their messages).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/soak.py`: the repo root's harness/

from harness.procs import free_port, start, stop, wait_http, wait_until  # noqa: E402
from run import log, write_markdown  # noqa: E402 - bench/run.py: the benchmarks' report helpers
ADMIN = "soak-admin-token"
BEGIN, END = "<!-- soak:begin (written by bench/soak.py) -->", "<!-- soak:end -->"
KINDS = ("sse", "whole", "ndjson", "native_whole")
LOST = re.compile(r"GPU node '([^']+)' was lost")  # the gateway's words for a node gone mid-request


class Soak:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.logs = tmp / "logs"
        self.logs.mkdir()
        self.counts: dict[str, int] = {k: 0 for k in KINDS}
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.cut_clean = 0
        self.cut_dirty = 0
        self.kills = 0
        self.killed: list[tuple[str, float]] = []  # (node name, when) of every SIGKILL
        self.unexplained: list[str] = []  # the first few errors no kill explains, for the report
        self.latencies: list[float] = []
        self.samples: list[tuple[float, float]] = []
        self.expected = "".join(f"tok{i} " for i in range(args.tokens))

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def killed_during(self, message: Any, started: float) -> bool:
        """Whether `message` names a node ("GPU node 'soak-1' was lost ...") that was killed after the
        request started: only then was its failure unavoidable."""
        text = message if isinstance(message, str) else json.dumps(message)
        names = set(LOST.findall(text))
        return any(name in names and when >= started for name, when in self.killed)

    def unexplained_error(self, kind: str, message: Any) -> None:
        self.error(kind)
        if len(self.unexplained) < 5:
            self.unexplained.append(f"{kind}: {str(message)[:300]}")

    # -- the processes ----------------------------------------------------------------------
    def fake(self, stack: ExitStack, name: str) -> str:
        port = free_port()
        proc = start(["-m", "tests.fake_ollama", "--port", str(port), "--models", "soak:latest",
                      "--delay", str(self.args.delay), "--chunks", str(self.args.tokens)], self.logs / f"{name}.log")
        stack.callback(stop, proc)
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/api/version", proc, 30, self.logs / f"{name}.log")
        return url

    def node(self, i: int) -> subprocess.Popen:
        return start(["-m", "ollabridge", "node", "--cloud", self.gw, "--ollama", self.node_ollama[i], "--name",
                      f"soak-{i}", "--slots", str(self.args.slots), "--credentials", str(self.tmp / f"cred-{i}.json")],
                     self.logs / f"node-{i}.log")

    def pair(self, i: int) -> None:
        flow = httpx.post(f"{self.gw}/device/start", json={"name": f"soak-{i}"}).json()
        httpx.post(f"{self.gw}/device/approve", json={"user_code": flow["user_code"]},
                   headers={"Authorization": f"Bearer {ADMIN}"}).raise_for_status()
        cred = httpx.post(f"{self.gw}/device/token", json={"device_code": flow["device_code"]}).json()
        path = self.tmp / f"cred-{i}.json"
        path.write_text(json.dumps({self.gw: {**cred, "cloud": self.gw}}))
        os.chmod(path, 0o600)

    def connected(self) -> set[str]:
        nodes = httpx.get(f"{self.gw}/device/nodes", timeout=5, headers={"Authorization": f"Bearer {ADMIN}"}
                          ).json()["nodes"]
        return {n["name"] for n in nodes if n["connected"]}

    # -- the clients ------------------------------------------------------------------------
    async def client(self, http: httpx.AsyncClient, deadline: float, rng: random.Random) -> None:
        msg = [{"role": "user", "content": "soak"}]
        while time.monotonic() < deadline:
            kind = rng.choice(KINDS)
            self.counts[kind] += 1
            started = time.monotonic()
            try:
                if kind == "sse":
                    await self.sse(http, msg, started)
                elif kind == "whole":
                    r = await http.post("/v1/chat/completions", json={"model": "soak", "messages": msg})
                    if r.status_code != 200:
                        self.http_error(r, started)
                    elif r.json()["choices"][0]["message"]["content"] != self.expected:
                        self.error("wrong_content")
                    else:
                        self.ok += 1
                elif kind == "ndjson":
                    await self.ndjson(http, msg, started)
                else:
                    r = await http.post("/ollama/api/chat", json={"model": "soak", "messages": msg, "stream": False})
                    if r.status_code != 200:
                        self.http_error(r, started)
                    elif r.json()["message"]["content"] != self.expected:
                        self.error("wrong_content")
                    else:
                        self.ok += 1
                self.latencies.append(time.monotonic() - started)
            except httpx.TimeoutException:
                self.error("client_timeout")
            except httpx.HTTPError as exc:
                self.error(f"transport:{type(exc).__name__}")
            await asyncio.sleep(rng.uniform(0, self.args.think))

    def http_error(self, r: httpx.Response, started: float) -> None:
        text = r.text
        if r.status_code == 502 and self.killed_during(text, started):
            self.error("http_502_node_lost")  # unavoidable: the node serving it was killed
        else:
            self.unexplained_error(f"http_{r.status_code}", text)

    async def sse(self, http: httpx.AsyncClient, msg: list, started: float) -> None:
        async with http.stream("POST", "/v1/chat/completions", json={"model": "soak", "messages": msg,
                                                                     "stream": True}) as r:
            if r.status_code != 200:
                await r.aread()
                self.http_error(r, started)
                return
            text, error, done = [], None, False
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                event = json.loads(line[6:])
                if "error" in event:
                    error = event["error"]
                elif event.get("choices"):
                    text.append(event["choices"][0]["delta"].get("content") or "")
        self.stream_end("".join(text), error, done, started)

    async def ndjson(self, http: httpx.AsyncClient, msg: list, started: float) -> None:
        async with http.stream("POST", "/ollama/api/chat", json={"model": "soak", "messages": msg}) as r:
            if r.status_code != 200:
                await r.aread()
                self.http_error(r, started)
                return
            text, error, done = [], None, False
            async for line in r.aiter_lines():
                if not line:
                    continue
                obj = json.loads(line)
                if "error" in obj:
                    error = obj["error"]
                    break
                text.append((obj.get("message") or {}).get("content") or "")
                if obj.get("done"):
                    done = True
                    break
        self.stream_end("".join(text), error, done and error is None, started)

    def stream_end(self, text: str, error: Any, done: bool, started: float) -> None:
        if error is not None:
            self.cut_clean += 1  # cut, and said so with an error event
            if self.killed_during(error, started):
                self.error("stream_cut_error_event")  # unavoidable: the node serving it was killed
            else:
                self.unexplained_error("stream_cut_error_event_no_kill", error)
        elif not done:
            self.cut_dirty += 1
            self.error("stream_cut_silently")
        elif text != self.expected:
            self.error("wrong_content")
        else:
            self.ok += 1

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        a = self.args
        with ExitStack() as stack:
            cpu = self.fake(stack, "cpu")
            self.node_ollama = [self.fake(stack, f"node-ollama-{i}") for i in range(a.nodes)]
            port = free_port()
            self.gw = f"http://127.0.0.1:{port}"
            env = {"HOST": "127.0.0.1", "PORT": str(port), "OLLAMA_BASE_URL": cpu, "OLLABRIDGE_ENGINE": "ollama",
                   "OLLABRIDGE_UI": "0", "OLLABRIDGE_DATA_DIR": str(self.tmp / "data"), "OLLABRIDGE_ADMIN_TOKEN": ADMIN,
                   "OLLABRIDGE_RELAY_HEARTBEAT": "2", "OLLABRIDGE_DEVICE_INTERVAL": "0.2",
                   "OLLABRIDGE_DEVICE_RATE": "1000", "OLLABRIDGE_MODELS_TTL": "1", "OLLABRIDGE_LOG_LEVEL": "warning",
                   "OLLABRIDGE_MAX_QUEUE": "1000"}
            gateway = start(["app.py"], self.logs / "gateway.log", env)
            stack.callback(stop, gateway)
            wait_http(f"{self.gw}/health", gateway, 60, self.logs / "gateway.log")
            nodes: list[subprocess.Popen] = []
            for i in range(a.nodes):
                self.pair(i)
                nodes.append(self.node(i))
            stack.callback(lambda: [stop(n) for n in nodes])
            wait_until(lambda: len(self.connected()) == a.nodes, 30, "nodes connected")
            proc = psutil.Process(gateway.pid)
            rss_start = proc.memory_info().rss / 2**20
            log(f"soak: {a.clients} clients for {a.seconds:g}s, {a.nodes} nodes killed every {a.kill_every:g}s; "
                f"gateway RSS {rss_start:.1f} MiB")
            started = time.monotonic()
            asyncio.run(self.load(started + a.seconds, nodes, proc))
            took = time.monotonic() - started
            rss_end = proc.memory_info().rss / 2**20
            gateway_alive = gateway.poll() is None
            metrics = httpx.get(f"{self.gw}/metrics").text if gateway_alive else ""
        total = sum(self.counts.values())
        lat = sorted(self.latencies)
        unavoidable = {"stream_cut_error_event", "http_502_node_lost"}
        result = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python bench/soak.py", *(a for a in sys.argv[1:] if not a.startswith("/"))]),
            "clients": a.clients, "seconds": round(took, 1), "nodes": a.nodes, "kill_every_s": a.kill_every,
            "node_kills": self.kills, "tokens_per_answer": a.tokens, "chunk_delay_s": a.delay,
            "requests": total, "requests_by_kind": self.counts, "ok": self.ok,
            "requests_per_s": round(total / took, 1),
            "errors": dict(sorted(self.errors.items())),
            "errors_not_from_killed_nodes": {k: v for k, v in self.errors.items() if k not in unavoidable},
            "errors_not_from_killed_nodes_sample": self.unexplained,
            "streams_cut": self.cut_clean + self.cut_dirty, "streams_cut_with_error_event": self.cut_clean,
            "streams_cut_silently": self.cut_dirty,
            "latency_s": {"p50": round(lat[len(lat) // 2], 3) if lat else None,
                          "p99": round(lat[int(len(lat) * 0.99)], 3) if lat else None},
            "gateway_rss_mib": {"start": round(rss_start, 1), "end": round(rss_end, 1),
                                "peak": round(max([rss_start, rss_end, *[s[1] for s in self.samples]]), 1),
                                "samples": [[round(t, 1), round(m, 1)] for t, m in self.samples]},
            "gateway_alive": gateway_alive,
            "metrics_requests_total": sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                                          if line.startswith("ollabridge_requests_total{")),
        }
        return result

    async def load(self, deadline: float, nodes: list[subprocess.Popen], proc: psutil.Process) -> None:
        limits = httpx.Limits(max_connections=self.args.clients + 10, max_keepalive_connections=self.args.clients)
        async with httpx.AsyncClient(base_url=self.gw, timeout=httpx.Timeout(60.0, connect=10.0), limits=limits) as http:
            rng = random.Random(self.args.seed)
            clients = [asyncio.create_task(self.client(http, deadline, random.Random(rng.random())))
                       for _ in range(self.args.clients)]
            chaos = asyncio.create_task(self.chaos(deadline, nodes, rng))
            sampler = asyncio.create_task(self.sample(deadline, proc))
            await asyncio.gather(*clients)
            chaos.cancel()
            sampler.cancel()
            await asyncio.gather(chaos, sampler, return_exceptions=True)
            for i, n in enumerate(nodes):  # bring every node back for the next run's sake
                if n.poll() is not None:
                    nodes[i] = self.node(i)

    async def chaos(self, deadline: float, nodes: list[subprocess.Popen], rng: random.Random) -> None:
        while time.monotonic() + self.args.kill_every < deadline:
            await asyncio.sleep(self.args.kill_every)
            i = rng.randrange(len(nodes))
            self.killed.append((f"soak-{i}", time.monotonic()))
            os.killpg(nodes[i].pid, signal.SIGKILL)
            await asyncio.to_thread(nodes[i].wait)
            self.kills += 1
            await asyncio.sleep(1.0)
            nodes[i] = self.node(i)

    async def sample(self, deadline: float, proc: psutil.Process) -> None:
        started = time.monotonic()
        while time.monotonic() < deadline:
            self.samples.append((time.monotonic() - started, proc.memory_info().rss / 2**20))
            await asyncio.sleep(max(1.0, self.args.seconds / 12))


def markdown(r: dict[str, Any]) -> str:
    rss = r["gateway_rss_mib"]
    errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "none"
    other = ", ".join(f"{k}: {v}" for k, v in r["errors_not_from_killed_nodes"].items()) or "none"
    return "\n".join([
        "## Soak: clients, killed nodes, memory (bench/soak.py)", "",
        f"`{r['command']}` on {r['date']}: {r['clients']} clients for {r['seconds']} s, mixing SSE streams, whole "
        f"`/v1` answers, NDJSON streams and whole native answers ({r['tokens_per_answer']} tokens each, "
        f"{r['chunk_delay_s'] * 1000:g} ms apart), while {r['nodes']} GPU nodes were killed (SIGKILL) and restarted "
        f"every {r['kill_every_s']:g} s ({r['node_kills']} kills). All processes on loopback, 2 shared cores.", "",
        "| figure | value |", "|---|---|",
        f"| requests | {r['requests']} ({r['requests_per_s']}/s), {r['ok']} answered in full and word for word |",
        "| by kind | " + ", ".join(f"{k} {v}" for k, v in r["requests_by_kind"].items()) + " |",
        f"| errors by kind | {errors} |",
        f"| errors a killed node did not cause | {other} |",
        f"| streams cut | {r['streams_cut']}: {r['streams_cut_with_error_event']} ended with an error event, "
        f"{r['streams_cut_silently']} silently |",
        f"| latency (whole request) | p50 {r['latency_s']['p50']} s, p99 {r['latency_s']['p99']} s |",
        f"| gateway RSS | idle before the load {rss['start']} MiB; "
        + (f"warm ({rss['samples'][1][0]:g} s in) {rss['samples'][1][1]} MiB; " if len(rss["samples"]) > 1 else "")
        + f"end {rss['end']} MiB; peak {rss['peak']} MiB |",
        f"| gateway alive at the end | {'yes' if r['gateway_alive'] else 'NO'} |", "",
        "A request a node was serving when it was killed can only fail: before its first chunk the gateway retries "
        "it elsewhere (invisible), after it the client gets an error event (`stream_cut_error_event`) or a 502 "
        "(`http_502_node_lost`) naming the lost node, and these count as unavoidable only when that node was killed "
        "while the request was open. Everything else counts as a failure of the gateway. "
        "The latency is that of a saturated box (the clients, the gateway, the agents and the scripted Ollamas "
        "share 2 cores), not the gateway's own cost (figure 1 above). "
        "RSS samples over the run (s, MiB): " + ", ".join(f"{t:g}: {m:g}" for t, m in rss["samples"]) + ".",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--slots", type=int, default=16, help="requests each node serves at once")
    parser.add_argument("--kill-every", type=float, default=4.0, help="seconds between node kills")
    parser.add_argument("--tokens", type=int, default=12, help="tokens per answer")
    parser.add_argument("--delay", type=float, default=0.02, help="seconds between chunks upstream")
    parser.add_argument("--think", type=float, default=1.0, help="a client waits up to this long between requests")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "soak.json")
    parser.add_argument("--md", default=str(ROOT / "docs" / "benchmarks.md"), help="markdown file, or 'none'")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ollabridge-soak-") as tmp:
        result = Soak(args, Path(tmp)).run()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.md != "none":
        write_markdown(Path(args.md), markdown(result), BEGIN, END)
    print(json.dumps({k: v for k, v in result.items() if k != "gateway_rss_mib"} |
                     {"gateway_rss_mib": {k: v for k, v in result["gateway_rss_mib"].items() if k != "samples"}},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
