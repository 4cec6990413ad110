"""Shared fixtures: the in-box engine and the gateway as real processes on loopback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.procs import ROOT, free_port, running

OUT = ROOT / "test-output"


@pytest.fixture(scope="session")
def out_dir() -> Path:
    OUT.mkdir(exist_ok=True)
    return OUT


@pytest.fixture(scope="session")
def engine_url(out_dir: Path) -> str:
    """The real in-box engine (llama.cpp on Gemma 3 270M), one process for the whole run."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running(["-m", "ollabridge.engine", "--host", "127.0.0.1", "--port", str(port)],
                 f"{url}/api/version", log=out_dir / "engine.log", timeout=300):
        yield url
