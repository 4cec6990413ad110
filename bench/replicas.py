"""Figure 9: gateway replicas behind HAProxy, and the cost of serving a node held by another replica.

    python bench/replicas.py                      # 3 rounds; results into docs/benchmarks.md
    python bench/replicas.py --rounds 1 --seconds 1 --hop-n 100 --md none   # a smoke run

Every part a separate process on loopback: a redis-server (harness/redis.py), three gateways
(`python app.py`, OLLABRIDGE_REDIS_URL and OLLABRIDGE_REPLICA_URL set), each with the scripted
upstream (bench/upstream.py, model `fast`) as its Ollama, and HAProxy (harness/haproxy.py) in front.

- **Requests/s**: 32 connections in a closed loop (bench/loadgen.py), non-streamed `fast` chats
  through HAProxy, with 1, 2 and 3 replicas behind it (HAProxy restarted with that many servers;
  the same three processes throughout), each round measuring all three within seconds.
- **Hop**: a node agent in front of a scripted Ollama (tests/fake_ollama.py, model `hop`, 16 chunks
  at once) connected to replica B; sequential non-streamed chats on one connection, on B (its own
  node) and on A (forwarded to B, `/internal/nodes/...`), the added p50 = A − B per round.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/replicas.py`: the repo root's harness/ and tests/

from harness.haproxy import HAProxy  # noqa: E402
from harness.procs import free_port, running, start, stop, wait_until  # noqa: E402
from harness.redis import RedisServer  # noqa: E402
from run import cpu_seconds, gateway_env, loadavg, loadgen, log, save_results  # noqa: E402 - bench/run.py's helpers
from tests.relay_support import ADMIN, pair, save_credential  # noqa: E402

BEGIN, END = "<!-- replicas:begin (written by bench/replicas.py) -->", "<!-- replicas:end -->"
MSG = [{"role": "user", "content": "Say hello."}]
HOP_TARGET_US = 1000.0


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def med(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def body(model: str) -> dict[str, Any]:
    return {"model": model, "messages": MSG, "stream": False}


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    logs = tmp / "logs"
    logs.mkdir()
    load_before = loadavg()
    with ExitStack() as stack:
        redis = stack.enter_context(RedisServer(tmp / "redis"))
        up_port = free_port()
        stack.enter_context(running([str(BENCH / "upstream.py"), "--port", str(up_port)],
                                    f"http://127.0.0.1:{up_port}/api/version", log=logs / "upstream.log"))
        ports = [free_port() for _ in range(3)]
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        pids = []
        for port, url in zip(ports, urls):
            env = {**gateway_env(port, f"http://127.0.0.1:{up_port}", tmp / "data"),
                   "OLLABRIDGE_REDIS_URL": redis.url, "OLLABRIDGE_REPLICA_URL": url, "OLLABRIDGE_ADMIN_TOKEN": ADMIN,
                   "OLLABRIDGE_LOG_LEVEL": "warning"}
            pids.append(stack.enter_context(running(["app.py"], f"{url}/health", env=env,
                                                    log=logs / f"gateway-{port}.log")).pid)

        rps: dict[int, list[float]] = {1: [], 2: [], 3: []}
        errors = {1: 0, 2: 0, 3: 0}
        for r in range(args.rounds):
            for n in (1, 2, 3):
                with HAProxy(tmp / f"haproxy-{n}", urls[:n]) as lb:
                    res = loadgen({"mode": "throughput", "port": lb.port, "path": "/ollama/api/chat",
                                   "concurrency": 32, "duration": args.seconds, "warmup": 1.0,
                                   "body": body("fast")})
                rps[n].append(res["rps"])
                errors[n] += res["errors"]
            log(f"  round {r + 1}: " + ", ".join(f"{n} replica(s) {rps[n][-1]:.0f} rps" for n in rps))

        # The hop: a node on B, asked on B and on A.
        node_port = free_port()
        node_url = f"http://127.0.0.1:{node_port}"
        stack.enter_context(running(["-m", "tests.fake_ollama", "--port", str(node_port), "--models", "hop:latest",
                                     "--chunks", "16"], f"{node_url}/api/version", log=logs / "node-ollama.log"))
        creds = tmp / "creds.json"
        save_credential(creds, urls[1], pair(urls[1], "bench-node"))
        agent = start(["-m", "ollabridge", "node", "--cloud", urls[1], "--ollama", node_url, "--name", "bench-node",
                       "--slots", "4", "--credentials", str(creds)], logs / "node.log")
        stack.callback(stop, agent)
        models = lambda url: {m["name"] for m in httpx.get(f"{url}/ollama/api/tags", timeout=5).json()["models"]}  # noqa: E731
        wait_until(lambda: "hop:latest" in models(urls[0]) and "hop:latest" in models(urls[1]), 30, "hop on A and B")
        local, remote, added, cpu_added = [], [], [], []
        for r in range(args.rounds):
            row, cpu = {}, {}
            for name, port in (("local", ports[1]), ("forwarded", ports[0])):
                before = cpu_seconds(pids[0]) + cpu_seconds(pids[1])
                row[name] = loadgen({"mode": "latency", "port": port, "path": "/ollama/api/chat", "n": args.hop_n,
                                     "warmup": 50, "body": body("hop")})
                cpu[name] = (cpu_seconds(pids[0]) + cpu_seconds(pids[1]) - before) / row[name]["all_requests"] * 1e6
            local.append(row["local"]["p50_us"])
            remote.append(row["forwarded"]["p50_us"])
            added.append(row["forwarded"]["p50_us"] - row["local"]["p50_us"])
            cpu_added.append(cpu["forwarded"] - cpu["local"])
            log(f"  hop round {r + 1}: local p50 {local[-1]:.0f} us, forwarded {remote[-1]:.0f} us, "
                f"added {added[-1]:.0f} us, added CPU {cpu_added[-1]:.0f} us/request "
                f"(errors {row['local']['errors']}, {row['forwarded']['errors']})")
    return {"command": "python bench/replicas.py " + " ".join(sys.argv[1:]), "commit": commit(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}",
            "load_before": load_before, "load_after": loadavg(), "rounds": args.rounds, "seconds": args.seconds,
            "rps": {str(n): med(v) for n, v in rps.items()}, "errors": {str(n): e for n, e in errors.items()},
            "hop": {"local_p50_us": med(local), "forwarded_p50_us": med(remote), "added_p50_us": med(added),
                    "added_cpu_us_per_request": med(cpu_added),
                    "requests_per_round": args.hop_n, "target_us": HOP_TARGET_US}}


def markdown(r: dict[str, Any]) -> str:
    rows = [f"| {n} | {v['median']:.0f} | {v['min']:.0f}–{v['max']:.0f} | {r['errors'][n]} |"
            for n, v in r["rps"].items()]
    hop = r["hop"]
    added = hop["added_p50_us"]
    met = "✅" if added["median"] <= hop["target_us"] else "❌"
    return "\n".join([
        "## Figure 9: replicas behind HAProxy, and the cross-replica hop (bench/replicas.py)",
        "",
        f"`{r['command'].strip()}` on {r['date']} at commit {r['commit']} ({r['machine']}; load average before "
        f"{r['load_before']}, after {r['load_after']}, the machine shared with other work); {r['rounds']} rounds, "
        "median (min–max).",
        "",
        f"Requests/s, 32 connections in a closed loop through HAProxy, non-streamed `/ollama/api/chat` of the "
        f"scripted upstream's `fast` model, {r['seconds']:g} s per measurement:",
        "",
        "| replicas | requests/s | range | errors |",
        "|---|---|---|---|",
        *rows,
        "",
        f"Cross-replica hop, non-streamed chats one after the other on one connection, a node agent on replica B: "
        f"asked on B {hop['local_p50_us']['median'] / 1000:.2f} ms p50, asked on A (forwarded to B) "
        f"{hop['forwarded_p50_us']['median'] / 1000:.2f} ms; **added p50 {added['median'] / 1000:.2f} ms** "
        f"({added['min'] / 1000:.2f}–{added['max'] / 1000:.2f}), target ≤ {hop['target_us'] / 1000:g} ms {met}. "
        f"CPU the hop adds (replicas A and B together, per request, from their CPU times): "
        f"{hop['added_cpu_us_per_request']['median'] / 1000:.2f} ms, roughly what the added latency would be on an idle machine.",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per throughput measurement")
    parser.add_argument("--hop-n", type=int, default=1000, help="requests per hop measurement")
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "replicas.json")
    parser.add_argument("--md", default=str(ROOT / "docs" / "benchmarks.md"), help="markdown file, or 'none'")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ollabridge-replicas-") as tmp:
        result = run(args, Path(tmp))
    save_results(result, args.json, args.md, markdown(result), BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
