"""Figure 8: the README's first command on a fresh machine, clone -> first streamed token; and the node's install.

    python bench/first_start.py --runs 3                # the first command, median of 3 (~6+ min each)
    python bench/first_start.py --node-runs 3 --runs 0  # `pip install` of the node alone, from a gateway

"Fresh" is imitated on this machine: a new clone (`git clone --depth 1` of --repo at --ref) into a new
temporary folder, a new HOME, XDG_CACHE_HOME, PIP_CACHE_DIR and UV_CACHE_DIR (all empty), no venv,
PIP_CONFIG_FILE=/dev/null (this machine's pip mirrors are not a fresh machine's), the packages from
PyPI. The command is the one in README.md's "Run it (first command)" block, run as written by bash;
`--ref main` measures another commit's own first command (each run reads the clone's README). The
clock stops at the first content chunk of a `stream: true` chat on /ollama/v1/chat/completions.
Phases: clone, until the gateway answers /health (venv, installs, start), until the first token.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.procs import ROOT, free_port, start, stop, wait_until  # noqa: E402

# The network's certificate settings pass through (a TLS-inspecting proxy's CA is the network's, not
# the machine's state); nothing else of this environment does.
TRUST = ("SSL_CERT_FILE", "SSL_CERT_DIR", "PIP_CERT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "HTTPS_PROXY",
         "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy")
PYTHON_DIR = Path(os.path.realpath(shutil.which("python3.11") or sys.executable)).parent


def readme_first_command(checkout: Path = ROOT) -> str:
    text = (checkout / "README.md").read_text()
    block = re.search(r"## Run it \(first command\)\s+```bash\n(.+?)\n```", text, re.S)
    if not block:
        raise SystemExit("README.md has no '## Run it (first command)' bash block")
    return block.group(1).strip()


def fresh_env(work: Path, **extra: str) -> dict[str, str]:
    dirs = {name: work / name for name in ("home", "cache", "pip-cache", "uv-cache")}
    for path in dirs.values():
        path.mkdir()
    path = f"{PYTHON_DIR}:/usr/local/bin:/usr/bin:/bin"  # python3.11 itself, not a shim needing the old HOME
    trust = {name: os.environ[name] for name in TRUST if name in os.environ}
    return {**trust, "PATH": path, "HOME": str(dirs["home"]), "XDG_CACHE_HOME": str(dirs["cache"]),
            "PIP_CACHE_DIR": str(dirs["pip-cache"]), "UV_CACHE_DIR": str(dirs["uv-cache"]),
            "PIP_CONFIG_FILE": "/dev/null", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "LANG": "C.UTF-8", **extra}


def first_token(gateway: str) -> bool:
    body = {"model": "gemma3:270m", "messages": [{"role": "user", "content": "Hello!"}], "stream": True}
    with httpx.stream("POST", f"{gateway}/ollama/v1/chat/completions", json=body, timeout=600) as reply:
        if reply.status_code != 200:
            return False
        for line in reply.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                return True
    return False


def health(gateway: str) -> bool:
    return httpx.get(f"{gateway}/health", timeout=2).status_code == 200


def one_first_start(repo: str, ref: str, log_dir: Path, index: int) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="ollabridge-fresh-"))
    try:
        port = free_port()
        env = fresh_env(work, HOST="127.0.0.1", PORT=str(port), OLLAMA_BASE_URL=f"http://127.0.0.1:{free_port()}",
                        GRADIO_ANALYTICS_ENABLED="False")
        log = log_dir / f"first-start-{index}.log"
        load = os.getloadavg()
        began = time.monotonic()
        subprocess.run(["git", "clone", "-q", "--depth", "1", "--branch", ref, repo, str(work / "ollabridge")],
                       check=True, env=env, timeout=600)
        cloned = time.monotonic()
        command = readme_first_command(work / "ollabridge")
        proc = subprocess.Popen(["bash", "-c", command], cwd=work / "ollabridge", env=env,
                                stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        gateway = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: proc.poll() is None and health(gateway) or proc.poll() is not None, 3600,
                       "the gateway's /health", interval=0.5)
            if proc.poll() is not None:
                raise SystemExit(f"the first command exited with {proc.returncode}; see {log}")
            answered = time.monotonic()
            wait_until(lambda: first_token(gateway), 900, "the first streamed token", interval=0.5)
            token = time.monotonic()
        finally:
            stop(proc)
        return {"command": command, "clone_s": cloned - began, "to_health_s": answered - cloned,
                "to_token_s": token - answered,
                "total_s": token - began, "load_before": load[0], "load_after": os.getloadavg()[0]}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def one_node_install(gateway: str, wheel: str) -> float:
    """`pip install <gateway>/node/<wheel>` into a new venv, empty cache, packages from PyPI."""
    work = Path(tempfile.mkdtemp(prefix="ollabridge-node-"))
    try:
        env = fresh_env(work)
        subprocess.run([str(PYTHON_DIR / "python3.11"), "-m", "venv", str(work / "venv")], check=True, env=env)
        began = time.monotonic()
        subprocess.run([str(work / "venv" / "bin" / "pip"), "install", "-q", f"{gateway}/node/{wheel}"],
                       check=True, env=env, timeout=600)
        took = time.monotonic() - began
        subprocess.run([str(work / "venv" / "bin" / "ollabridge"), "node", "--help"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        return took
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} s ({min(values):.0f}–{max(values):.0f}), {len(values)} runs"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="first-command runs (0: none)")
    parser.add_argument("--node-runs", type=int, default=0, help="node install runs (0: none)")
    parser.add_argument("--repo", default=str(ROOT), help="what to clone (a path or URL; default this checkout)")
    parser.add_argument("--ref", default=None, help="branch to clone (default: the checkout's current one)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "first_start.json")
    args = parser.parse_args()
    ref = args.ref or subprocess.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=ROOT, capture_output=True,
                                     text=True, check=True).stdout.strip()
    log_dir = args.out.parent
    log_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {"ref": ref, "nproc": os.cpu_count(),
                                  "first_start": [], "node_install_s": []}
    for i in range(args.runs):
        run = one_first_start(args.repo, ref, log_dir, i)
        results["command"] = run.pop("command")
        results["first_start"].append(run)
        print(f"first command at {ref}: {results['command']}")
        print(f"run {i + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in run.items()), flush=True)
    if args.node_runs:
        from ollabridge.node.package import wheel_name

        port = free_port()
        data = Path(tempfile.mkdtemp(prefix="ollabridge-gw-"))
        gw = start(["app.py"], env={"HOST": "127.0.0.1", "PORT": str(port), "OLLABRIDGE_ENGINE": "ollama",
                                    "OLLABRIDGE_UI": "0", "OLLABRIDGE_DATA_DIR": str(data)})
        try:
            wait_until(lambda: health(f"http://127.0.0.1:{port}"), 120, "the gateway")
            for i in range(args.node_runs):
                took = one_node_install(f"http://127.0.0.1:{port}", wheel_name())
                results["node_install_s"].append(took)
                print(f"node install {i + 1}: {took:.1f} s", flush=True)
        finally:
            stop(gw)
            shutil.rmtree(data, ignore_errors=True)
    if results["first_start"]:
        print("figure 8, clone -> first streamed token:", summary([r["total_s"] for r in results["first_start"]]))
    if results["node_install_s"]:
        print("figure 8, pip install of the node alone:", summary(results["node_install_s"]))
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
