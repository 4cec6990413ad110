"""The app factory: builds the FastAPI app (API, and the web UI when enabled)."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from ollabridge import __version__
from ollabridge.api import (device_routes, errors, node_routes, ollama_routes, openai_routes, relay_routes,
                            system_routes)
from ollabridge.api.limits import BodyLimitMiddleware
from ollabridge.config import Settings
from ollabridge.gateway import Gateway

DESCRIPTION = """OpenAI-compatible and Ollama-native LLM gateway. Use `/ollama/v1` as an OpenAI base URL.
Native Ollama clients use `/ollama` as their host."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    gateway = Gateway(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(title="OllaBridge", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.gateway = gateway
    app.state.settings = settings
    errors.install(app)
    app.include_router(system_routes.router)
    app.include_router(openai_routes.router, prefix="/ollama")
    app.include_router(openai_routes.router, include_in_schema=False)
    app.include_router(ollama_routes.router, prefix="/ollama")
    app.include_router(device_routes.router)
    app.include_router(relay_routes.router)
    app.include_router(node_routes.router)
    origins = settings.cors_origins
    app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"], allow_headers=["*"],
                       allow_credentials=origins != ["*"], expose_headers=["Retry-After"])
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.ui:  # keep last: the UI is mounted at "/", after every API route (Gradio imports lazily)
        from ollabridge.ui import mount_ui
        app = mount_ui(app, gateway, settings)
    return app


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per backend call drowns the log
