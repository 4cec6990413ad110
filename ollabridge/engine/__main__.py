"""``python -m ollabridge.engine``: serve the in-box model over Ollama's API with uvicorn.

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


def main(argv: list[str] | None = None) -> int:
    host, port, model = _defaults()
    parser = argparse.ArgumentParser(prog="python -m ollabridge.engine", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=host)
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--model", default=model, help="'' (Gemma 3 270M), a .gguf path, or hf:<owner>/<repo>/<file>.gguf")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the bundled model is assembled")
    parser.add_argument("--ctx", type=int, default=4096, help="context length (tokens)")
    parser.add_argument("--embed-ctx", type=int, default=512, help="max tokens per embedding input")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    parser.add_argument("--log-level", default=os.environ.get("OLLABRIDGE_LOG_LEVEL", "info"))
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        model_file = resolve_model(args.model, args.cache_dir or default_cache_dir())
    except (ModelSpecError, HubDownloadUnavailable) as exc:
        print(f"ollabridge.engine: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    from .server import create_app

    app = create_app(model_file, n_ctx=args.ctx, n_threads=args.threads, embed_ctx=args.embed_ctx)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(),
                timeout_graceful_shutdown=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
