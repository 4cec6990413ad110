"""The Space image, built from the staged Space repository and booted, without a Docker engine.

buildah builds space/Dockerfile against a python:3.11-slim made here with debootstrap and a local
`docker.io/ollama/ollama:<the Dockerfile's pin>` whose `ollama` is tests/standin_ollama.py; then the
image's CMD (start.sh) runs as the image's user and must pull its default model through Ollama's API,
answer /health and a streamed chat, and stop cleanly on SIGTERM. pip inside the build reaches PyPI;
everything the booted image does stays on loopback. Times go to test-output/space-image-timings.json.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest
from huggingface_hub import metadata_load
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ollabridge.space.deploy import stage
from tests.buildah_support import (Buildah, base_rootfs, import_python_base, kill_sessions, session_members,
                                   signal_pids, skip_reason, standin_ollama_image)
from tests.procs import ROOT, free_port, wait_http, wait_until

SPACE = ROOT / "space"
IMAGE = "localhost/ollabridge-space:test"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ollabridge-test-base"
_skip = skip_reason()
pytestmark = [pytest.mark.timeout(1500), pytest.mark.skipif(_skip is not None, reason=_skip or "")]


def ollama_pin() -> str:
    """The Ollama release the Dockerfile's `FROM docker.io/ollama/ollama:${OLLAMA_VERSION}` stage pins."""
    text = (SPACE / "Dockerfile").read_text()
    assert re.search(r"^FROM docker\.io/ollama/ollama:\$\{OLLAMA_VERSION\} AS ollama$", text, flags=re.M)
    return re.search(r"^ARG OLLAMA_VERSION=(\d+\.\d+\.\d+)$", text, flags=re.M).group(1)


def locked_versions(path: Path) -> dict[str, str]:
    """{name: version} of a pip requirements lock (`name==version`, optional markers and hashes)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pins = {}
    for line in text.splitlines():
        line = re.sub(r"\s--hash=\S+", "", line.split("#", 1)[0]).strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate():
            (spec,) = req.specifier
            assert spec.operator == "==", f"{path.name} pins {line!r} loosely"
            pins[canonicalize_name(req.name)] = spec.version
    return pins


@pytest.fixture(scope="module")
def built(tmp_path_factory, out_dir):
    """(buildah, timings): the Space image built from a staged Space repository."""
    work = tmp_path_factory.mktemp("space-image")
    b = Buildah(work / "buildah")
    timings: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        rootfs = base_rootfs(CACHE)
        timings["base_rootfs_s"] = round(time.monotonic() - t0, 1)  # ~0 when the cache has it
        t0 = time.monotonic()
        import_python_base(b, rootfs)
        standin_ollama_image(b, f"docker.io/ollama/ollama:{ollama_pin()}", work)
        timings["base_import_s"] = round(time.monotonic() - t0, 1)
        repo = stage(work / "space-repo")
        t0 = time.monotonic()
        b("bud", "--isolation", "chroot", "--pull=never", "-f", str(repo / "Dockerfile"), "-t", IMAGE, str(repo))
        timings["image_build_s"] = round(time.monotonic() - t0, 1)
        yield b, timings
    finally:
        (out_dir / "space-image-timings.json").write_text(json.dumps(timings, indent=1) + "\n")
        b.remove_all()


@pytest.fixture(scope="module")
def container(built):
    b, _ = built
    return b("from", "--pull=never", IMAGE)


def run_in(b: Buildah, ctr: str, *cmd: str, env: dict[str, str] | None = None) -> str:
    flags = [f"--env={k}={v}" for k, v in (env or {}).items()]
    return b("run", "--isolation", "chroot", *flags, ctr, "--", *cmd)


def test_image_matches_the_space_front_matter(built, container):
    b, _ = built
    meta = metadata_load(SPACE / "README.md")
    config = b.config(IMAGE)
    assert f"{meta['app_port']}/tcp" in config["ExposedPorts"]
    assert f"PORT={meta['app_port']}" in config["Env"]
    assert config["Cmd"] == ["./start.sh"]
    # Spaces run the image as uid 1000 with its app in ~/app (Hugging Face's Docker Spaces layout).
    assert config["User"] == "user" and config["WorkingDir"] == "/home/user/app"
    assert run_in(b, container, "id", "-u") == "1000"
    layout = run_in(b, container, "sh", "-c", 'pwd; echo "$HOME"; test -x start.sh && test -f app.py '
                    '&& test -f ollabridge/server.py && test -w . && test -w "$HOME" && echo ok')
    assert layout.splitlines() == ["/home/user/app", "/home/user", "ok"]
    # Ollama where its official image has it, so the pinned COPY --from stage finds it.
    assert run_in(b, container, "sh", "-c", "command -v ollama; test -d /usr/lib/ollama && echo libs") \
        .splitlines() == ["/usr/bin/ollama", "libs"]


def test_image_installs_exactly_the_lock(built, container):
    b, _ = built
    locked = locked_versions(ROOT / "requirements.lock")
    assert {"fastapi", "uvicorn", "gradio", "httpx"} <= set(locked)
    installed = {canonicalize_name(name): version for name, _, version in
                 (line.partition("==") for line in run_in(b, container, "pip", "freeze").splitlines())}
    assert {name: installed.get(name) for name in locked} == locked


def start_sh_pids(pid: int) -> list[int]:
    """start.sh's own process among `pid`'s descendants (not buildah, whose argv names it too)."""
    return [p.pid for p in psutil.Process(pid).children(recursive=True)
            if p.name() == "bash" and "./start.sh" in p.cmdline()]


def test_image_boots_pulls_its_model_and_chats(built, container, tmp_path):
    b, timings = built
    port, ollama_port = free_port(), free_port()
    url, ollama = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{ollama_port}"
    log = tmp_path / "boot.log"
    env = {"HOST": "127.0.0.1", "PORT": str(port), "OLLAMA_HOST": f"127.0.0.1:{ollama_port}",
           "OLLAMA_BASE_URL": ollama, "OLLABRIDGE_ADMIN_TOKEN": "test-admin-token"}
    flags = [f"--env={k}={v}" for k, v in env.items()]
    t0 = time.monotonic()
    proc = b.popen("run", "--isolation", "chroot", *flags, container, "--", *b.config(IMAGE)["Cmd"], log=log)
    sessions: set[int] = set()
    try:
        wait_http(f"{url}/health", proc, 180, log)
        timings["boot_to_health_s"] = round(time.monotonic() - t0, 1)
        sessions = session_members(proc.pid)
        out = log.read_text()
        assert "start.sh: Ollama answers at" in out and "pulling in the background: qwen2.5:1.5b" in out

        # The image's default model is pulled through Ollama's API (the stand-in holds it at 50%).
        def pull() -> dict:
            return httpx.get(f"{url}/health", timeout=5).json()["pulls"]["models"][0]
        held = wait_until(lambda: (p := pull())["percent"] == 50.0 and p, 60, "the pull at 50%")
        assert held["model"] == "qwen2.5:1.5b" and held["state"] == "pulling"
        httpx.post(f"{ollama}/_standin/release", timeout=5)
        wait_until(lambda: pull()["state"] == "done", 30, "the pull done")

        # A streamed chat for `default` (OLLABRIDGE_DEFAULT_MODEL) through the image's Ollama.
        deltas, models = [], set()
        with httpx.stream("POST", f"{url}/ollama/v1/chat/completions", timeout=30,
                          json={"model": "default", "stream": True,
                                "messages": [{"role": "user", "content": "hi"}]}) as reply:
            assert reply.status_code == 200, reply.read()
            for line in reply.iter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    models.add(chunk["model"])
                    deltas += [c["delta"].get("content") or "" for c in chunk["choices"]]
        assert "".join(deltas) == "hello from qwen2.5:1.5b" and models == {"qwen2.5:1.5b"}
        assert httpx.get(f"{url}/", timeout=10).status_code == 200  # the web UI, as on the Space

        # SIGTERM (what a Space restart sends) stops the gateway, then Ollama, and exits 0.
        signal_pids(start_sh_pids(proc.pid), signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
        assert "start.sh: stopped" in log.read_text()
        for probe in (f"{url}/health", f"{ollama}/api/version"):
            with pytest.raises(httpx.ConnectError):
                httpx.get(probe, timeout=2)
    finally:
        sessions |= session_members(proc.pid)
        signal_pids([proc.pid], signal.SIGKILL)
        kill_sessions(sessions)
        proc.wait(10)
