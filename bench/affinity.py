"""Conversation affinity with real tokens: time to first token of a conversation's later turns, with
affinity on and off. On loopback, every part a separate process.

    python bench/affinity.py                     # 4 conversations x 4 turns; results into docs/benchmarks.md
    python bench/affinity.py --conversations 2 --turns 2 --rules 20 --md none   # a smoke run

Setup: two in-box engines (`python -m ollabridge.engine`, llama.cpp on OLLABRIDGE_INBOX_MODEL, the
bundled Gemma 3 270M by default), each behind a node agent (`python -m ollabridge node --slots 1`)
connected to one gateway (`python app.py`, its own Ollama a scripted one without the model), once
with OLLABRIDGE_AFFINITY=on and once off (a fresh gateway each time, the same engines).

Each conversation has its own system prompt of `--rules` rules (~1,000 tokens at the default 42) and runs
`--turns` turns: a short user message, the engine's real answer (`--tokens` tokens) kept as the
assistant's. Conversations run two at a time, as many as there are engines, one request at a time
and interleaved turn by turn (A1 B1 A2 B2 ..., then C and D): a user switching between two chats,
the light load where every engine is free when a turn arrives and the choice decides where it goes.
TTFT is the client's wait from sending the request to the first streamed chunk. Each mode's system
prompts differ from the other's, so no mode finds the other's prefixes cached.
Target: TTFT of turns >= 2 with affinity / without <= 0.3 (median).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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
sys.path.insert(0, str(ROOT))  # run as `python bench/affinity.py`: the repo root's harness/ and tests/

from harness.procs import free_port, start, stop, wait_http, wait_until  # noqa: E402
from run import gateway_env, loadavg, log, save_results  # noqa: E402 - bench/run.py: the benchmarks' helpers
from tests.relay_support import ADMIN, pair, relay_nodes, save_credential  # noqa: E402

BEGIN, END = "<!-- affinity:begin (written by bench/affinity.py) -->", "<!-- affinity:end -->"
TARGET = 0.3
QUESTIONS = ["Hello, who are you?", "What should I do first?", "Tell me more about that.",
             "And after that?", "Can you summarise?", "Thanks, anything else?"]


def system_prompt(label: str, rules: int) -> str:
    """A system prompt of `rules` rules (~24 tokens each), its first words naming the conversation."""
    return f"Conversation {label}. " + " ".join(
        f"Rule {i} for {label}: answer politely, cite the number {i}, and keep it short." for i in range(rules))


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.logs = tmp / "logs"
        self.logs.mkdir()

    def service(self, stack: ExitStack, name: str, argv: list[str], ready: str, env: dict[str, str] | None = None,
                timeout: float = 60) -> None:
        proc = start(argv, self.logs / f"{name}.log", env)
        stack.callback(stop, proc)
        wait_http(ready, proc, timeout, self.logs / f"{name}.log")

    def engine(self, stack: ExitStack, name: str) -> str:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        self.service(stack, name, ["-m", "ollabridge.engine", "--host", "127.0.0.1", "--port", str(port)],
                     f"{url}/api/version", timeout=300)
        return url

    def run(self) -> dict[str, Any]:
        a = self.args
        load_before = loadavg()
        with ExitStack() as stack:
            engines = [self.engine(stack, f"engine-{i + 1}") for i in range(2)]
            self.model = httpx.get(f"{engines[0]}/api/tags", timeout=10).json()["models"][0]["name"]
            port = free_port()
            cpu = f"http://127.0.0.1:{port}"
            self.service(stack, "cpu", ["-m", "tests.fake_ollama", "--port", str(port), "--models", "cpu-only:latest"],
                         f"{cpu}/api/version")
            modes = {mode: self.mode(mode, engines, cpu) for mode in a.modes.split(",")}
        result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "command": " ".join(["python bench/affinity.py", *sys.argv[1:]]),
                  "machine": f"{os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}",
                  "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                           text=True).stdout.strip(),
                  "load_before": load_before, "load_after": loadavg(), "model": self.model,
                  "conversations": a.conversations, "turns": a.turns, "rules": a.rules, "tokens": a.tokens,
                  "modes": modes}
        if "on" in modes and "off" in modes:
            result["ratio_median"] = round(modes["on"]["later_ttft_s"]["median"] / modes["off"]["later_ttft_s"]["median"], 3)
            result["ratio_mean"] = round(modes["on"]["later_ttft_s"]["mean"] / modes["off"]["later_ttft_s"]["mean"], 3)
        return result

    def mode(self, mode: str, engines: list[str], cpu: str) -> dict[str, Any]:
        """A fresh gateway with OLLABRIDGE_AFFINITY=`mode`, the two engines as its nodes, the workload."""
        with ExitStack() as stack:
            port = free_port()
            gw = f"http://127.0.0.1:{port}"
            env = {**gateway_env(port, cpu, self.tmp / f"data-{mode}"), "OLLABRIDGE_ADMIN_TOKEN": ADMIN,
                   "OLLABRIDGE_DEVICE_RATE": "1000", "OLLABRIDGE_LOG_LEVEL": "warning", "OLLABRIDGE_AFFINITY": mode,
                   "OLLABRIDGE_FIRST_TOKEN_TIMEOUT": "600"}
            self.service(stack, f"gateway-{mode}", ["app.py"], f"{gw}/health", env)
            for i, engine in enumerate(engines):
                name = f"engine-{i + 1}"
                creds = self.tmp / f"{mode}-{name}.json"
                save_credential(creds, gw, pair(gw, name))
                agent = start(["-m", "ollabridge", "node", "--cloud", gw, "--ollama", engine, "--name", name,
                               "--slots", "1", "--credentials", str(creds)], self.logs / f"node-{mode}-{name}.log")
                stack.callback(stop, agent)
            wait_until(lambda: len(relay_nodes(gw)) == len(engines), 60, "nodes connected")
            turns = self.workload(gw, mode)
            health = httpx.get(f"{gw}/health", timeout=10).json()
            served = {b["name"]: b["requests"] for b in health["backends"] if b["kind"] == "node"}
            speeds = {b["name"]: b["speed"] for b in health["backends"] if b["kind"] == "node"}
        later = [t["ttft_s"] for t in turns if t["turn"] >= 2]
        first = [t["ttft_s"] for t in turns if t["turn"] == 1]
        streams = health["streams"]
        log(f"affinity {mode}: later turns' TTFT median {statistics.median(later):.2f} s")
        return {"later_ttft_s": summary(later), "first_ttft_s": summary(first),
                "prompt_tokens_first_turn": round(statistics.mean(t["prompt_eval_count"] for t in turns
                                                                  if t["turn"] == 1)),
                "served_by_node": served, "speed_by_node": speeds,
                "affinity": {k: streams[k] for k in ("affinity_hits", "affinity_yielded", "affinity_misses")},
                "turns": turns}

    def workload(self, gw: str, mode: str) -> list[dict[str, Any]]:
        a = self.args
        names = [chr(ord("A") + i) for i in range(a.conversations)]
        talks = {n: [{"role": "system", "content": system_prompt(f"{mode}-{n}", a.rules)}] for n in names}
        turns = []
        with httpx.Client(base_url=gw, timeout=httpx.Timeout(900.0, connect=10.0)) as http:
            for pair_ in (names[i:i + 2] for i in range(0, len(names), 2)):  # as many at a time as engines
                for turn in range(1, a.turns + 1):
                    for n in pair_:
                        talks[n].append({"role": "user", "content": QUESTIONS[(turn - 1) % len(QUESTIONS)]})
                        answer = self.ask(http, talks[n])
                        talks[n].append({"role": "assistant", "content": answer.pop("text")})
                        turns.append({"conversation": n, "turn": turn, **answer})
                        log(f"affinity {mode}: {n}{turn} TTFT {answer['ttft_s']:.2f} s "
                            f"({answer['prompt_eval_count']} prompt tokens)")
        return turns

    def ask(self, http: httpx.Client, messages: list[dict[str, Any]]) -> dict[str, Any]:
        body = {"model": self.model, "messages": messages, "stream": True,
                "options": {"num_predict": self.args.tokens, "temperature": 0}}
        text, ttft, final = [], None, {}
        sent = time.perf_counter()
        with http.stream("POST", "/ollama/api/chat", json=body) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line:
                    continue
                ttft = ttft if ttft is not None else time.perf_counter() - sent
                chunk = json.loads(line)
                if "error" in chunk:
                    raise RuntimeError(chunk["error"])
                text.append(chunk.get("message", {}).get("content", ""))
                final = chunk
        return {"ttft_s": round(ttft or 0.0, 3), "prompt_eval_count": final.get("prompt_eval_count", 0),
                "prompt_eval_s": round(final.get("prompt_eval_duration", 0) / 1e9, 3), "text": "".join(text)}


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "median": round(statistics.median(values), 3), "mean": round(statistics.mean(values), 3),
            "min": round(min(values), 3), "max": round(max(values), 3)}


def markdown(r: dict[str, Any]) -> str:
    rows = []
    for mode, m in r["modes"].items():
        later, first, aff = m["later_ttft_s"], m["first_ttft_s"], m["affinity"]
        served = ", ".join(f"{k} {v}" for k, v in sorted(m["served_by_node"].items()))
        rows.append(f"| `OLLABRIDGE_AFFINITY={mode}` | {later['median']:.2f} s | {later['mean']:.2f} s | "
                    f"{later['min']:.2f}–{later['max']:.2f} s | {first['median']:.2f} s | {served} | "
                    f"{aff['affinity_hits']} / {aff['affinity_yielded']} / {aff['affinity_misses']} |")
    ratio = r.get("ratio_median")
    verdict = "" if ratio is None else (
        f"**Later turns' TTFT with affinity ÷ without: {ratio:.2f} (median; mean {r['ratio_mean']:.2f}); "
        f"target ≤ {TARGET:g}: {'✅ met' if ratio <= TARGET else '❌ not met'}.**")
    return "\n".join([
        "## Affinity: later turns go where their conversation is cached (bench/affinity.py)",
        "",
        f"`{r['command']}` on {r['date']} at commit {r['commit']} ({r['machine']}; load average before "
        f"{r['load_before']}, after {r['load_after']}, the machine shared with other work): two in-box engines "
        f"({r['model']}, llama.cpp) as two GPU nodes (one slot each) of one gateway; {r['conversations']} "
        f"conversations × {r['turns']} turns, each with its own system prompt of ~{_first_tokens(r)} tokens in all "
        f"at turn 1, answers of {r['tokens']} tokens; two conversations at a time (as many as engines), one "
        "request at a time, interleaved turn by turn (A1 B1 A2 B2 …, then C and D). TTFT: the client's wait "
        "for the first streamed chunk of `/ollama/api/chat`.",
        "",
        "| setting | TTFT turns ≥ 2, median | mean | range | TTFT turn 1, median | requests per node | "
        "hits / yielded / misses |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        verdict,
        "",
        "An engine keeps one sequence in its KV cache (llama.cpp reuses the longest common prefix of the previous "
        "request's tokens; nothing in `ollabridge/engine/llm.py` resets it). With affinity on, each conversation "
        "stays on the node that served it, so a later turn evaluates only its new messages. Off, every turn "
        "finds both nodes free and the choice takes the first (same priority, load and speed): both "
        "conversations share one engine and evict each other's prefix, so every turn evaluates its whole prompt "
        "again. Under load (both engines busy) affinity yields: a turn goes to whichever node is free.",
    ])


def _first_tokens(r: dict[str, Any]) -> int:
    return next(iter(r["modes"].values()))["prompt_tokens_first_turn"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--rules", type=int, default=42, help="rules in each system prompt (~24 tokens each)")
    parser.add_argument("--tokens", type=int, default=8, help="tokens per answer (num_predict)")
    parser.add_argument("--modes", default="on,off")
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "affinity.json")
    parser.add_argument("--md", default=str(ROOT / "docs" / "benchmarks.md"), help="markdown file, or 'none'")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ollabridge-affinity-") as tmp:
        result = Bench(args, Path(tmp)).run()
    save_results(result, args.json, args.md, markdown(result), BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
