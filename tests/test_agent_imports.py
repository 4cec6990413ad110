"""The node agent runs where only httpx and websockets are installed (a Colab node, a gaming PC)."""

from __future__ import annotations

import subprocess
import sys

from tests.procs import ROOT

GATEWAY_ONLY = ["fastapi", "starlette", "uvicorn", "pydantic", "pydantic_settings", "orjson", "gradio",
                "prometheus_client", "huggingface_hub", "llama_cpp"]


def test_node_agent_needs_only_httpx_and_websockets():
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in GATEWAY_ONLY)
    code = (f"import sys; {blocked}; import runpy; sys.argv = ['ollabridge', 'node', '--help']; "
            "runpy.run_module('ollabridge', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--cloud" in proc.stdout
