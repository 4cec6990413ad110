"""Entry point: `python app.py` serves the gateway on $HOST:$PORT (default 0.0.0.0:7860)."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def main() -> None:
    import uvicorn

    from ollabridge.config import Settings
    from ollabridge.server import configure_logging, create_app

    settings = Settings()
    configure_logging(settings.log_level)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level=settings.log_level.lower(), timeout_graceful_shutdown=10)


if __name__ == "__main__":
    main()
