"""The web UI: a Gradio Blocks app (Chat, Status, Pair a device, Keys, API) on the gateway's own app.

Gradio takes seconds to import, so nothing here imports it at module level: `mount_ui` pulls it
in only when the UI is enabled (OLLABRIDGE_UI, default on).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

    from ollabridge.config import Settings
    from ollabridge.gateway import Gateway


def mount_ui(app: "FastAPI", gateway: "Gateway", settings: "Settings") -> "FastAPI":
    """Mount the UI at `/` on `app`. Call after every API route is added so those win."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from ollabridge.ui.app import mount

    return mount(app, gateway, settings)
