"""Resume: streams each losing its GPU node mid-answer, finished by another backend. On loopback,
every part a separate process.

    python bench/resume.py                       # 100 streams per scenario; results into docs/benchmarks.md
    python bench/resume.py --rounds 1 --streams 5 --md none   # a smoke run in seconds

Setup: a gateway (`python app.py`, heartbeats at the default 10 s) whose own Ollama is a scripted
one (tests/fake_ollama.py), and a node agent (`python -m ollabridge node`) in front of another; both
serve the model `resume`, `--tokens` tokens `--delay` s apart. The node is preferred (priority 0).
Each round starts the agent, opens `--streams` SSE streams (`/ollama/v1/chat/completions`) on it,
and once every stream has `--lose-at` tokens loses the node, in one of two ways:

- `closed`: SIGKILL of the agent: its socket closes;
- `frozen`: SIGSTOP of the agent: its socket stays open and nothing comes (a frozen VM); only the
  stream's own pace can tell (the stall ping), 3 missed heartbeats would take 30 s.

Every stream must then end exactly as one that never failed (the whole text, no error event, one
final chunk, completion tokens summed). The gap is what each client waited between the last token
of the lost node and the first of the next backend: the longest wait between two tokens of the
stream (the other waits are the stream's own pace, `--delay`). Targets: 100 complete, 0 errors; gap
p99 ≤ 0.5 s when the socket closes, ≤ 3 s for a frozen node.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
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

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/resume.py`: the repo root's harness/ and tests/

from harness.procs import free_port, start, stop, wait_http, wait_until  # noqa: E402
from run import gateway_env, loadavg, log, save_results  # noqa: E402 - bench/run.py: the benchmarks' helpers
from tests.relay_support import ADMIN, pair, save_credential  # noqa: E402

BEGIN, END = "<!-- resume:begin (written by bench/resume.py) -->", "<!-- resume:end -->"
TARGETS = {"closed": 0.5, "frozen": 3.0}
SIGNALS = {"closed": signal.SIGKILL, "frozen": signal.SIGSTOP}


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Stream:
    """One client's SSE stream: each token's arrival, the text, errors, final chunks, the usage."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.text: list[str] = []
        self.errors: list[str] = []
        self.finals = 0
        self.ids: set[str] = set()
        self.usage: dict[str, Any] | None = None

    async def run(self, http: httpx.AsyncClient, tokens: int) -> None:
        body = {"model": "resume", "stream": True, "messages": [{"role": "user", "content": "resume"}],
                "stream_options": {"include_usage": True}}
        try:
            async with http.stream("POST", "/ollama/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    self.errors.append(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
                    return
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        self.errors.append(str(event["error"])[:200])
                        continue
                    self.ids.add(event["id"])
                    if event.get("usage") and not event["choices"]:
                        self.usage = event["usage"]
                    for choice in event["choices"]:
                        if choice["delta"].get("content"):
                            self.times.append(time.monotonic())
                            self.text.append(choice["delta"]["content"])
                        if choice.get("finish_reason"):
                            self.finals += 1
        except httpx.HTTPError as exc:
            self.errors.append(repr(exc))

    def gap(self) -> float:
        return max((b - a for a, b in zip(self.times, self.times[1:])), default=0.0)

    def exact(self, expected: str, tokens: int) -> bool:
        return (not self.errors and "".join(self.text) == expected and self.finals == 1 and len(self.ids) == 1
                and self.usage is not None and self.usage["completion_tokens"] == tokens)


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.logs = tmp / "logs"
        self.logs.mkdir()
        self.expected = "".join(f"tok{i} " for i in range(args.tokens))

    def fake(self, stack: ExitStack, name: str) -> str:
        port = free_port()
        proc = start(["-m", "tests.fake_ollama", "--port", str(port), "--models", "resume:latest",
                      "--delay", str(self.args.delay), "--chunks", str(self.args.tokens)], self.logs / f"{name}.log")
        stack.callback(stop, proc)
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/api/version", proc, 30, self.logs / f"{name}.log")
        return url

    def agent(self) -> subprocess.Popen:
        return start(["-m", "ollabridge", "node", "--cloud", self.gw, "--ollama", self.node_ollama, "--name",
                      "bench-node", "--slots", str(self.args.streams), "--credentials", str(self.creds)],
                     self.logs / "node.log")

    def node_connected(self) -> bool:
        nodes = httpx.get(f"{self.gw}/ollama/status", timeout=5).json()["relay"]["nodes"]
        return any(n["name"] == "bench-node" and n["connected"] for n in nodes)

    def run(self) -> dict[str, Any]:
        a = self.args
        load_before = loadavg()
        with ExitStack() as stack:
            cpu = self.fake(stack, "cpu")
            self.node_ollama = self.fake(stack, "node-ollama")
            port = free_port()
            self.gw = f"http://127.0.0.1:{port}"
            env = {**gateway_env(port, cpu, self.tmp / "data"), "OLLABRIDGE_ADMIN_TOKEN": ADMIN,
                   "OLLABRIDGE_DEVICE_RATE": "1000", "OLLABRIDGE_LOG_LEVEL": "warning"}
            gateway = start(["app.py"], self.logs / "gateway.log", env)
            stack.callback(stop, gateway)
            wait_http(f"{self.gw}/health", gateway, 60, self.logs / "gateway.log")
            self.creds = self.tmp / "node.json"
            save_credential(self.creds, self.gw, pair(self.gw, "bench-node"))
            scenarios = {name: self.scenario(name) for name in a.scenarios.split(",")}
            metrics = httpx.get(f"{self.gw}/metrics", timeout=5).text
        counters = {line.split(" ")[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                    if line.startswith(("ollabridge_stream_resumes_total", "ollabridge_stall_probes_total"))}
        return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join(["python bench/resume.py", *sys.argv[1:]]),
                "machine": f"{os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}",
                "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                         text=True).stdout.strip(),
                "load_before": load_before, "load_after": loadavg(),
                "rounds": a.rounds, "streams_per_round": a.streams, "tokens": a.tokens, "delay_s": a.delay,
                "lose_at": a.lose_at, "scenarios": scenarios, "gateway_counters": counters}

    def scenario(self, name: str) -> dict[str, Any]:
        a = self.args
        streams: list[Stream] = []
        for round_ in range(a.rounds):
            agent = self.agent()
            try:
                wait_until(self.node_connected, 30, "node connected")
                streams += asyncio.run(self.round(agent, SIGNALS[name]))
            finally:
                if name == "frozen":
                    os.killpg(agent.pid, signal.SIGKILL)
                stop(agent, timeout=5)
            wait_until(lambda: not self.node_connected(), 30, "lost node gone")
            log(f"resume {name}: round {round_ + 1}/{a.rounds} done")
        gaps = [s.gap() for s in streams]
        ok = sum(s.exact(self.expected, a.tokens) for s in streams)
        return {"streams": len(streams), "complete_and_exact": ok, "errors": sum(bool(s.errors) for s in streams),
                "error_sample": [e for s in streams for e in s.errors][:3],
                "gap_s": {"p50": round(quantile(gaps, 0.5), 3), "p99": round(quantile(gaps, 0.99), 3),
                          "max": round(max(gaps), 3)}, "target_p99_s": TARGETS[name]}

    async def round(self, agent: subprocess.Popen, sig: int) -> list[Stream]:
        a = self.args
        limits = httpx.Limits(max_connections=a.streams + 5)
        async with httpx.AsyncClient(base_url=self.gw, timeout=httpx.Timeout(60.0, connect=10.0), limits=limits) as http:
            streams = [Stream() for _ in range(a.streams)]
            tasks = [asyncio.create_task(s.run(http, a.tokens)) for s in streams]
            while not all(len(s.text) >= a.lose_at for s in streams) and not all(t.done() for t in tasks):
                await asyncio.sleep(0.005)  # the clients' own progress: polled, nothing to await across them
            os.killpg(agent.pid, sig)
            await asyncio.gather(*tasks)
        return streams


def markdown(r: dict[str, Any]) -> str:
    rows = []
    for name, s in r["scenarios"].items():
        what = {"closed": "node killed (socket closes)", "frozen": "node frozen (SIGSTOP: socket open, silent)"}[name]
        gap = s["gap_s"]
        met = s["complete_and_exact"] == s["streams"] and not s["errors"] and gap["p99"] <= s["target_p99_s"]
        rows.append(f"| {what} | {s['streams']} | {s['complete_and_exact']} | {s['errors']} | "
                    f"{gap['p50']:.3f} s | {gap['p99']:.3f} s | {gap['max']:.3f} s | ≤ {s['target_p99_s']:g} s | "
                    f"{'✅' if met else '❌'} |")
    counters = ", ".join(f"`{k}` {v:g}" for k, v in r["gateway_counters"].items())
    return "\n".join([
        "## Resume: streams that lose their node mid-answer (bench/resume.py)",
        "",
        f"`{r['command']}` on {r['date']} at commit {r['commit']} ({r['machine']}; load average before "
        f"{r['load_before']}, after {r['load_after']}, the machine shared with other work): per scenario {r['rounds']} rounds of "
        f"{r['streams_per_round']} concurrent SSE streams on one GPU node agent, each stream {r['tokens']} tokens "
        f"{r['delay_s'] * 1000:g} ms apart; once every stream had {r['lose_at']} tokens the node was lost, and the "
        "gateway's own Ollama (the same scripted model) finished every stream. Heartbeats at the default 10 s "
        "(a frozen node would be dropped after 30 s without the stall ping).",
        "",
        "| scenario | streams | complete and exact | errors | gap p50 | gap p99 | gap max | target (p99) | met |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "*Complete and exact*: the whole text once, no error event, one chunk with a finish_reason, one id, "
        "completion tokens summed across both backends. *Gap*: the longest wait between two tokens of a stream, "
        "i.e. from the lost node's last token to the next backend's first (every other wait is the stream's own "
        f"{r['delay_s'] * 1000:g} ms pace, and the next backend's first token itself comes after that pace). "
        "A frozen node's gap is the stall bounds at work: 1 s of silence (`OLLABRIDGE_STALL_AFTER`; 8 × the "
        "stream's longest gap is less here), then a ping unanswered for 1 s (`OLLABRIDGE_STALL_PING`). "
        f"Gateway counters after both scenarios: {counters}.",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--streams", type=int, default=20, help="concurrent streams per round (on one node)")
    parser.add_argument("--tokens", type=int, default=60, help="tokens per answer")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds between tokens upstream")
    parser.add_argument("--lose-at", type=int, default=10, help="lose the node once every stream has this many tokens")
    parser.add_argument("--scenarios", default="closed,frozen")
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "resume.json")
    parser.add_argument("--md", default=str(ROOT / "docs" / "benchmarks.md"), help="markdown file, or 'none'")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ollabridge-resume-") as tmp:
        result = Bench(args, Path(tmp)).run()
    save_results(result, args.json, args.md, markdown(result), BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
