"""`python -m ollabridge node`: its flags (`add_arguments`) and what it runs (`run`).

    python -m ollabridge node --cloud https://<space>.hf.space [--ollama URL] [--name N] [--slots K]

Every flag but `--cloud` has an environment default: `OLLAMA_BASE_URL`, `OLLABRIDGE_NODE_NAME`,
`OLLABRIDGE_NODE_SLOTS`, `OLLABRIDGE_NODE_CREDENTIALS`, `OLLABRIDGE_NODE_MODELS_INTERVAL`;
`OLLABRIDGE_LOG_LEVEL` sets the log level. The exit status is the agent's (see `agent.py`),
2 for a bad `--slots`, 130 on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import socket
import sys
from pathlib import Path
from typing import Any

from ollabridge import __version__
from ollabridge.node.agent import NodeAgent
from ollabridge.node.banner import say
from ollabridge.node.credentials import default_credentials
from ollabridge.relay import protocol as p


def add_arguments(parser: Any) -> None:
    parser.add_argument("--cloud", required=True, help="the gateway, e.g. https://<space>.hf.space")
    parser.add_argument("--ollama", default=os.environ.get("OLLAMA_BASE_URL", "http://127.0.0.1:11434"),
                        help="this machine's Ollama (default: $OLLAMA_BASE_URL or http://127.0.0.1:11434)")
    parser.add_argument("--name", default=os.environ.get("OLLABRIDGE_NODE_NAME") or socket.gethostname()[:64],
                        help="the name the owner sees (default: the host name)")
    parser.add_argument("--slots", type=int, default=int(os.environ.get("OLLABRIDGE_NODE_SLOTS", "4")),
                        help="requests served at once (default 4)")
    parser.add_argument("--credentials", type=Path, default=None,
                        help="where credentials are saved (default: $OLLABRIDGE_NODE_CREDENTIALS or "
                             "~/.config/ollabridge/node-credentials.json)")
    parser.add_argument("--models-interval", type=float,
                        default=float(os.environ.get("OLLABRIDGE_NODE_MODELS_INTERVAL", "10")),
                        help="seconds between checks of the local model list (default 10)")


def run(args: Any) -> int:
    logging.basicConfig(level=os.environ.get("OLLABRIDGE_LOG_LEVEL", "info").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not 1 <= args.slots <= p.MAX_SLOTS:
        say(f"--slots must be between 1 and {p.MAX_SLOTS}")
        return 2
    agent = NodeAgent(args.cloud, args.ollama, args.name, args.slots, args.credentials or default_credentials(),
                      models_interval=args.models_interval)
    say(f"OllaBridge node agent {__version__} on {platform.node()}: cloud {agent.cloud}, Ollama {agent.ollama.url}")
    try:
        return asyncio.run(agent.run())
    except KeyboardInterrupt:
        say("Stopped.")
        return 130
