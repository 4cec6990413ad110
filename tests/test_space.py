"""The Space folder: what can be checked without a Docker engine (none runs here or in CI)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from huggingface_hub import metadata_load

from ollabridge.config import Settings
from ollabridge.space.deploy import SPACE_FILES, space_host, stage
from tests.procs import ROOT

SPACE = ROOT / "space"


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        op, _, rest = current.partition(" ")
        lines.append((op.upper(), rest.strip()))
        current = ""
    return lines


def copy_sources(path: Path) -> list[str]:
    sources = []
    for op, rest in dockerfile_instructions(path):
        if op not in ("COPY", "ADD"):
            continue
        args = [a for a in shlex.split(rest)]
        if any(a.startswith("--from") for a in args):
            continue  # from another image or stage, not the build context
        args = [a for a in args if not a.startswith("--")]
        sources += args[:-1]
    return sources


def test_front_matter_parses_and_port_matches_app():
    meta = metadata_load(SPACE / "README.md")
    assert meta["sdk"] == "docker"
    assert meta["app_port"] == 7860
    assert Settings.model_fields["port"].default == meta["app_port"]  # the app's default port
    assert len(meta["short_description"]) <= 60  # the Hub's limit
    assert meta["title"] and meta["emoji"]
    # "Sign in with Hugging Face" for the owner (ollabridge/ui/owner.py); Gradio's OAuth needs its extra.
    assert meta["hf_oauth"] is True
    assert re.search(r"^gradio\[oauth\]", (ROOT / "requirements.txt").read_text(), flags=re.M)
    env = " ".join(rest for op, rest in dockerfile_instructions(SPACE / "Dockerfile") if op == "ENV")
    assert "PORT=7860" in env
    exposed = [rest for op, rest in dockerfile_instructions(SPACE / "Dockerfile") if op == "EXPOSE"]
    assert exposed == ["7860"]


def test_dockerfile_copies_existing_files_and_runs_start_sh():
    sources = copy_sources(SPACE / "Dockerfile")
    assert {"requirements.lock", "app.py", "start.sh", "ollabridge"} <= set(sources)
    for src in sources:
        assert (ROOT / src).exists(), f"the Dockerfile copies {src}, which is missing"
    cmd = [rest for op, rest in dockerfile_instructions(SPACE / "Dockerfile") if op == "CMD"]
    assert cmd == ['["./start.sh"]']
    # Ollama comes from its pinned official image (no download in a RUN step: the tests build it with a
    # stand-in, tests/test_space_image.py), and pip installs exactly the lock.
    ops = dockerfile_instructions(SPACE / "Dockerfile")
    assert ("FROM", "docker.io/ollama/ollama:${OLLAMA_VERSION} AS ollama") in ops
    assert re.fullmatch(r"OLLAMA_VERSION=\d+\.\d+\.\d+", next(rest for op, rest in ops if op == "ARG"))
    assert ("COPY", "--from=ollama /usr/bin/ollama /usr/bin/ollama") in ops
    assert ("COPY", "--from=ollama /usr/lib/ollama /usr/lib/ollama") in ops
    runs = " ".join(rest for op, rest in ops if op == "RUN")
    assert "curl" not in runs and "pip install --no-cache-dir -r /tmp/requirements.lock" in runs


def test_start_sh_executable_and_valid():
    start = ROOT / "start.sh"
    assert os.access(start, os.X_OK)
    assert start.read_text().startswith("#!/usr/bin/env bash")
    subprocess.run(["bash", "-n", str(start)], check=True)


def test_staged_space_has_everything_the_image_needs(tmp_path):
    dest = stage(tmp_path / "space-repo")
    assert metadata_load(dest / "README.md")["sdk"] == "docker"
    for src in copy_sources(dest / "Dockerfile"):
        assert (dest / src).exists(), f"the staged Space lacks {src}"
    assert os.access(dest / "start.sh", os.X_OK)
    assert (dest / "ollabridge" / "server.py").is_file()
    assert not list(dest.rglob("__pycache__"))
    assert {rel for _, rel in SPACE_FILES} == {p.name for p in dest.iterdir()}
    assert (dest / "requirements.lock").read_text() == (ROOT / "requirements.lock").read_text()


def test_requirements_cover_the_space():
    reqs = (ROOT / "requirements.txt").read_text().lower()
    for name in ("fastapi", "uvicorn", "httpx", "huggingface_hub"):
        assert re.search(rf"^{name}\b", reqs, re.M), name


@pytest.mark.parametrize("space_id,host", [("alice/ollabridge", "alice-ollabridge.hf.space"),
                                           ("Alice/My_Space.v2", "alice-my-space-v2.hf.space")])
def test_space_host(space_id, host):
    assert space_host(space_id) == host
