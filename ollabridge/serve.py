"""`ollabridge serve` (and `python app.py`): the gateway on $HOST:$PORT, every setting from the environment.

`--host` and `--port` override HOST and PORT; the rest is in README's Configuration table.
"""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="address to bind (default: $HOST or 0.0.0.0)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $PORT or 7860)")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from ollabridge.config import Settings
    from ollabridge.server import configure_logging, serve

    overrides = {key: value for key in ("host", "port") if (value := getattr(args, key, None)) is not None}
    settings = Settings(**overrides)
    configure_logging(settings.log_level)
    serve(settings)  # uvicorn with a graceful drain on SIGTERM (OLLABRIDGE_SHUTDOWN_TIMEOUT)
    return 0
