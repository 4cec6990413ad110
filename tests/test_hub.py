"""huggingface_hub against a stand-in Hub on loopback (HF_ENDPOINT): `space duplicate` and `hf:` models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ollabridge.engine.model import default_cache_dir, ensure_builtin
from tests.procs import ROOT, free_port, running
from tests.standin_hub import StandinHub

SOURCE = "ruslanmv/ollabridge"


def hub_env(hub: StandinHub, tmp: Path, token: str | None) -> dict[str, str]:
    """An environment that sees only the stand-in Hub and no stored login."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGING_FACE_", "OLLABRIDGE_")) and k != "HUGGINGFACE_HUB_CACHE"}
    env.update({"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1",
                "HF_HUB_DISABLE_XET": "1", "HF_HUB_ETAG_TIMEOUT": "5", "GRADIO_ANALYTICS_ENABLED": "False",
                "PYTHONUNBUFFERED": "1"})
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def space_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`python -m ollabridge space ...` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "ollabridge", "space", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def hub():
    with StandinHub(tokens={"good-token": "alice"}, spaces={SOURCE, "alice/taken"}, files={}) as h:
        yield h


def test_duplicate_sets_secret_and_prints_urls(hub, tmp_path):
    done = space_cli("duplicate", "--to", "alice/my-bridge", env=hub_env(hub, tmp_path, "good-token"))
    assert done.returncode == 0, done.stderr
    dup = [c for c in hub.calls if c[0] == "POST" and c[1] == f"/api/spaces/{SOURCE}/duplicate"]
    assert len(dup) == 1
    _, _, body, auth = dup[0]
    assert auth == "Bearer good-token"
    assert body["repository"] == "alice/my-bridge"
    secret = hub.secrets["alice/my-bridge"]["OLLABRIDGE_ADMIN_TOKEN"]
    assert len(secret) >= 24
    assert {"key": "OLLABRIDGE_PUBLIC_URL", "value": "https://alice-my-bridge.hf.space"} in body["variables"]
    out = done.stdout
    assert out.count(secret) == 1  # generated, shown once
    assert f"{hub.url}/spaces/alice/my-bridge" in out
    assert "OpenAI base URL: https://alice-my-bridge.hf.space/ollama/v1" in out


def test_duplicate_with_given_admin_token_and_bare_name(hub, tmp_path):
    done = space_cli("duplicate", "--to", "bridge2", "--admin-token", "my-own-admin-token",
                     env=hub_env(hub, tmp_path, "good-token"))
    assert done.returncode == 0, done.stderr
    assert hub.secrets["alice/bridge2"]["OLLABRIDGE_ADMIN_TOKEN"] == "my-own-admin-token"
    assert "my-own-admin-token" not in done.stdout
    assert ("GET", "/api/whoami-v2") in [(c[0], c[1]) for c in hub.calls]


def test_duplicate_without_token(hub, tmp_path):
    done = space_cli("duplicate", "--to", "alice/x", env=hub_env(hub, tmp_path, None))
    assert done.returncode == 1
    assert "no Hugging Face token: set HF_TOKEN or run `hf auth login`" in done.stderr
    assert "Traceback" not in done.stderr
    assert hub.calls == []


def test_duplicate_with_wrong_token(hub, tmp_path):
    done = space_cli("duplicate", "--to", "alice/x", env=hub_env(hub, tmp_path, "wrong-token"))
    assert done.returncode == 1
    assert "the Hugging Face token was refused (401)" in done.stderr
    assert "Traceback" not in done.stderr
    assert not any(c[1].endswith("/duplicate") for c in hub.calls)


def test_duplicate_onto_existing_space_and_unknown_source(hub, tmp_path):
    env = hub_env(hub, tmp_path, "good-token")
    taken = space_cli("duplicate", "--to", "alice/taken", env=env)
    assert taken.returncode == 1 and "alice/taken already exists" in taken.stderr
    unknown = space_cli("duplicate", "--to", "alice/y", "--from", "nobody/nothing", env=env)
    assert unknown.returncode == 1 and "no Space nobody/nothing to duplicate" in unknown.stderr


# -- hf: models for the in-box engine ------------------------------------------------------------
@pytest.fixture(scope="module")
def gguf() -> Path:
    """A real GGUF to serve from the stand-in Hub: the bundled Gemma 3 270M (assembled once)."""
    return ensure_builtin(default_cache_dir())


def test_hf_model_downloaded_once_and_served(gguf, tmp_path, out_dir):
    spec = "hf:acme/tiny-gguf/gemma-270m.Q4_K_M.gguf"
    with StandinHub(tokens={"good-token": "alice"}, spaces=set(), private={"acme/tiny-gguf"},
                    files={"acme/tiny-gguf/gemma-270m.Q4_K_M.gguf": gguf}) as hub:
        port = free_port()
        env = {**hub_env(hub, tmp_path, "good-token"), "OLLABRIDGE_DATA_DIR": str(tmp_path / "data")}
        url = f"http://127.0.0.1:{port}"
        log = out_dir / "engine-hf.log"
        log.unlink(missing_ok=True)
        with running(["-m", "ollabridge.engine", "--host", "127.0.0.1", "--port", str(port), "--model", spec,
                      "--cache-dir", str(tmp_path / "cache")], f"{url}/api/version", env=env, log=log,
                     timeout=180):
            tags = httpx.get(f"{url}/api/tags", timeout=10).json()["models"]
            assert [m["name"] for m in tags] == ["gemma-270m.Q4_K_M:latest"]
            reply = httpx.post(f"{url}/api/generate", timeout=120, json={
                "model": "gemma-270m.Q4_K_M:latest", "prompt": "The capital of France is", "raw": True,
                "stream": False, "options": {"num_predict": 4, "temperature": 0}})
            assert reply.status_code == 200, reply.text
            assert reply.json()["done"] is True
        local = tmp_path / "data" / "models" / "hf" / "acme" / "tiny-gguf" / "gemma-270m.Q4_K_M.gguf"
        assert local.stat().st_size == gguf.stat().st_size
        gets = [c for c in hub.calls if c[0] == "GET" and "/resolve/" in c[1]]
        assert len(gets) == 1 and gets[0][3] == "Bearer good-token"
        text = log.read_text()
        assert "downloading hf:acme/tiny-gguf/gemma-270m.Q4_K_M.gguf" in text and "100%" in text

        # Fetched once: a second resolve uses the file on disk and asks the Hub nothing.
        calls = len(hub.calls)
        again = subprocess.run(
            [sys.executable, "-c", "import sys; from pathlib import Path; from ollabridge.engine.model import "
             "resolve_model; print(resolve_model(sys.argv[1], Path(sys.argv[2])).path)", spec,
             str(tmp_path / "cache")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr
        assert Path(again.stdout.strip()) == local
        assert len(hub.calls) == calls


@pytest.mark.parametrize("token,expected", [
    (None, "no repository acme/tiny-gguf on the Hub, or it is private and the token was missing or refused; "
           "set HF_TOKEN"),
    ("wrong-token", "the Hub refused the download (HTTP 401); check that HF_TOKEN is valid"),
])
def test_hf_model_token_errors(tmp_path, token, expected):
    with StandinHub(tokens={"good-token": "alice"}, spaces=set(), private={"acme/tiny-gguf"},
                    files={"acme/tiny-gguf/m.gguf": Path(__file__)}) as hub:
        env = {**hub_env(hub, tmp_path, token), "OLLABRIDGE_DATA_DIR": str(tmp_path / "data")}
        done = subprocess.run([sys.executable, "-m", "ollabridge.engine", "--port", str(free_port()),
                               "--model", "hf:acme/tiny-gguf/m.gguf"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data" / "models" / "hf" / "acme" / "tiny-gguf" / "m.gguf").exists()


def test_hf_model_missing_file(tmp_path):
    with StandinHub(tokens={}, spaces=set(), files={"acme/tiny-gguf/m.gguf": Path(__file__)}) as hub:
        env = {**hub_env(hub, tmp_path, None), "OLLABRIDGE_DATA_DIR": str(tmp_path / "data")}
        done = subprocess.run([sys.executable, "-m", "ollabridge.engine", "--port", str(free_port()),
                               "--model", "hf:acme/tiny-gguf/other.gguf"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "acme/tiny-gguf has no file other.gguf" in done.stderr
