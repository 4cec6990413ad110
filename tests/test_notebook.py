"""colab_gpu_node.ipynb: valid, and run top to bottom with nbclient against a local gateway.

The notebook's test switch (OLLABRIDGE_NOTEBOOK_CI=1) skips its Colab-only steps (GPU check, Ollama
install and start); the in-box engine (`engine_url`) stands in for the Colab machine's Ollama. The
gateway has no model of its own (its Ollama URL answers nothing), so a chat that succeeds was served by
the notebook's node. This test plays the Space's owner: it reads the code the notebook shows and
approves it through the admin API.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import httpx
import nbformat
from nbclient import NotebookClient

from ollabridge import __version__
from tests.conftest import gateway_env
from tests.procs import ROOT, free_port, running

NOTEBOOK = ROOT / "colab_gpu_node.ipynb"
ADMIN = "test-admin-token"


def test_notebook_is_valid_and_documents_the_switch():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    text = "\n".join(cell.source for cell in nb.cells)
    assert 'SPACE_URL = "https://YOUR-NAME-ollabridge.hf.space"' in text
    assert "OLLABRIDGE_NOTEBOOK_CI" in nb.cells[0].source  # documented up front
    assert "/node/ollabridge_node-" in text and "--target" in text and "OLLABRIDGE_UPSTREAMS" in text
    assert not any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")  # shipped clean


def approve_when_shown(node_log: Path, gateway: str, stop: threading.Event, approved: list[str]) -> None:
    """The owner: wait for the code in the node's log, approve it with the admin token."""
    while not stop.is_set():
        text = node_log.read_text(errors="replace") if node_log.exists() else ""
        codes = re.findall(r"^\s*Code: (\S+)", text, re.M)
        if codes and codes[-1] not in approved:
            reply = httpx.post(f"{gateway}/device/approve", json={"user_code": codes[-1]},
                               headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
            reply.raise_for_status()
            approved.append(codes[-1])
        stop.wait(0.2)  # the log belongs to another process; poll it


def test_notebook_runs_top_to_bottom(engine_url, out_dir, tmp_path, monkeypatch):
    port = free_port()
    gateway = f"http://127.0.0.1:{port}"
    env = gateway_env(tmp_path / "gw", port, OLLAMA_BASE_URL=f"http://127.0.0.1:{free_port()}",
                      OLLABRIDGE_DEVICE_INTERVAL="1", OLLABRIDGE_ADMIN_TOKEN=ADMIN)
    (tmp_path / "gw").mkdir()
    work = tmp_path / "work"
    for key, value in {"OLLABRIDGE_NOTEBOOK_CI": "1", "OLLABRIDGE_NOTEBOOK_SPACE_URL": gateway,
                       "OLLABRIDGE_NOTEBOOK_OLLAMA_URL": engine_url, "OLLABRIDGE_NOTEBOOK_MODEL": "gemma3:270m",
                       "OLLABRIDGE_NOTEBOOK_NODE_NAME": "ci-notebook-node",
                       "OLLABRIDGE_NOTEBOOK_WORKDIR": str(work)}.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    stop, approved = threading.Event(), []
    with running(["app.py"], f"{gateway}/health", env=env, log=out_dir / "gateway-notebook.log"):
        owner = threading.Thread(target=approve_when_shown, args=(work / "node.log", gateway, stop, approved),
                                 daemon=True)
        owner.start()
        try:
            NotebookClient(nb, timeout=240, kernel_name="python3",
                           resources={"metadata": {"path": str(tmp_path)}}).execute()
        finally:
            stop.set()
            owner.join(5)
            nbformat.write(nb, out_dir / "colab_gpu_node.executed.ipynb")
            pid = work / "node.pid"
            if pid.exists():  # the notebook's last cell stops the node; make sure nothing lingers
                import os
                import signal
                try:
                    os.kill(int(pid.read_text()), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        health = httpx.get(f"{gateway}/health", timeout=10).json()
        nodes = httpx.get(f"{gateway}/device/nodes", timeout=10, headers={"Authorization": f"Bearer {ADMIN}"}
                          ).json()["nodes"]

    assert len(approved) == 1
    outputs = "\n".join(out.get("text", "") or str(out.get("data", {}).get("text/plain", ""))
                        for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)
    assert "CI: GPU check skipped" in outputs and "CI: Ollama install skipped" in outputs
    assert f"Pairing code: {approved[0]}" in outputs
    assert "gemma3:270m is already pulled" in outputs
    assert "Connected to" in outputs
    assert "This node ci-notebook-node" in outputs and "connected" in outputs
    assert f"gemma3:270m via {gateway}" in outputs
    assert f"/node/ollabridge_node-{__version__}-py3-none-any.whl in" in outputs  # installed by pip
    assert "Node stopped." in outputs
    # Served by the notebook's node: the gateway itself has no model, and the relay counted the request.
    assert health["relay"]["requests_total"] >= 1
    assert [n["name"] for n in nodes] == ["ci-notebook-node"]
    assert nodes[0]["models"] == ["gemma3:270m"]
