"""Entry point: `python app.py` serves the gateway on $HOST:$PORT (default 0.0.0.0:7860)."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def main() -> None:
    from ollabridge.config import Settings
    from ollabridge.server import configure_logging, serve

    settings = Settings()
    configure_logging(settings.log_level)
    serve(settings)  # uvicorn with a graceful drain on SIGTERM (OLLABRIDGE_SHUTDOWN_TIMEOUT)


if __name__ == "__main__":
    main()
