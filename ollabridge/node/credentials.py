"""Where the gateway is and what this node saved to get back in.

`cloud_http` turns whatever the user typed (`https://x.hf.space/`, `wss://x.hf.space`, `x.hf.space`)
into the one form credentials are keyed by; `relay_url` is the WebSocket to dial. `Credentials` is
the saved file: one entry per cloud, mode 0600, at `default_credentials()` unless told otherwise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def cloud_http(url: str) -> str:
    """`https://x.hf.space/`, `wss://x.hf.space` or `x.hf.space` -> `https://x.hf.space`."""
    url = url.strip().rstrip("/")
    if url.startswith("wss://"):
        url = "https://" + url[6:]
    elif url.startswith("ws://"):
        url = "http://" + url[5:]
    elif "://" not in url:
        url = "https://" + url
    for suffix in ("/relay/connect", "/ollama/v1", "/ollama"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url


def relay_url(cloud: str) -> str:
    base = cloud_http(cloud)
    return ("wss://" + base[8:] if base.startswith("https://") else "ws://" + base[7:]) + "/relay/connect"


def default_credentials() -> Path:
    env = os.environ.get("OLLABRIDGE_NODE_CREDENTIALS")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "ollabridge" / "node-credentials.json"


class Credentials:
    """`{cloud: {node_id, node_token, relay_url, name, saved_at}}` in one JSON file, mode 0600."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _all(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (FileNotFoundError, ValueError):
            return {}

    def get(self, cloud: str) -> dict[str, Any] | None:
        entry = self._all().get(cloud_http(cloud))
        return entry if isinstance(entry, dict) and entry.get("node_token") else None

    def put(self, cloud: str, entry: dict[str, Any] | None) -> None:
        data = self._all()
        if entry is None:
            data.pop(cloud_http(cloud), None)
        else:
            data[cloud_http(cloud)] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.chmod(self.path.parent, 0o700)
        except OSError:
            pass
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
