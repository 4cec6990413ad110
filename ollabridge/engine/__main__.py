"""``ollabridge engine`` (``python -m ollabridge.engine``): the in-box model behind Ollama's API, with uvicorn.

Defaults: host/port from ``OLLAMA_BASE_URL`` (default ``http://127.0.0.1:11434``), model from
``OLLABRIDGE_INBOX_MODEL`` (empty: the bundled Gemma 3 270M, served as ``gemma3:270m``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from .model import HubDownloadUnavailable, ModelSpecError, default_cache_dir, resolve_model


def _defaults() -> tuple[str, int, str]:
    url = urlsplit(os.environ.get("OLLAMA_BASE_URL") or "http://127.0.0.1:11434")
    return url.hostname or "127.0.0.1", url.port or 11434, os.environ.get("OLLABRIDGE_INBOX_MODEL", "")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    host, port, model = _defaults()
    parser.add_argument("--host", default=host)
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--model", default=model, help="'' (Gemma 3 270M), a .gguf path, or hf:<owner>/<repo>/<file>.gguf")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the bundled model is assembled")
    parser.add_argument("--ctx", type=int, default=4096, help="context length (tokens)")
    parser.add_argument("--embed-ctx", type=int, default=512, help="max tokens per embedding input")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    parser.add_argument("--log-level", default=os.environ.get("OLLABRIDGE_LOG_LEVEL", "info"))


def run(args: argparse.Namespace) -> int:
    """Serve until stopped (`ollabridge engine`); 2 when the model cannot be found."""
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        model_file = resolve_model(args.model, args.cache_dir or default_cache_dir())
    except (ModelSpecError, HubDownloadUnavailable) as exc:
        print(f"ollabridge.engine: {exc}", file=sys.stderr)
        return 2

    try:
        import uvicorn

        from .server import create_app
    except ModuleNotFoundError as exc:
        print(f"ollabridge.engine: {exc.name} is not installed; the in-box engine needs the inbox extra: "
              'pip install "ollabridge[inbox]"', file=sys.stderr)
        return 2

    app = create_app(model_file, n_ctx=args.ctx, n_threads=args.threads, embed_ctx=args.embed_ctx)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(),
                timeout_graceful_shutdown=2)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ollabridge.engine", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
