"""The app factory: builds the FastAPI app (API, and the web UI when enabled)."""

from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager

import uvicorn

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from ollabridge import __version__
from ollabridge.api import (admin_routes, device_routes, errors, internal_routes, node_routes, openapi, relay_routes,
                            system_routes)
from ollabridge.api.anthropic import routes as anthropic_routes
from ollabridge.api.ollama import routes as ollama_routes
from ollabridge.api.openai import routes as openai_routes
from ollabridge.edge.middleware import EdgeMiddleware
from ollabridge.edge.body import BodyLimitMiddleware
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
    openapi.install(app)
    app.include_router(system_routes.router)
    app.include_router(openai_routes.router, prefix="/ollama")
    app.include_router(openai_routes.router, include_in_schema=False)
    app.include_router(anthropic_routes.router, prefix="/ollama")  # ANTHROPIC_BASE_URL=<space>/ollama
    app.include_router(anthropic_routes.router, include_in_schema=False)
    app.include_router(ollama_routes.router, prefix="/ollama")
    app.include_router(ollama_routes.root)
    app.include_router(device_routes.router)
    app.include_router(relay_routes.router)
    app.include_router(node_routes.router)
    app.include_router(admin_routes.router)
    app.include_router(internal_routes.router)  # other replicas' requests for the nodes held here
    # Added first, so inside CORS (401/429 carry its headers; preflights skip it): keys, limits,
    # timeouts, graceful shutdown, metrics and the log line (ollabridge/edge/).
    app.add_middleware(EdgeMiddleware, gateway=gateway)
    origins = settings.cors_origins
    app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"], allow_headers=["*"],
                       allow_credentials=origins != ["*"], expose_headers=["Retry-After", "X-Request-ID"])
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.ui:  # keep last: the UI is mounted at "/", after every API route (Gradio imports lazily)
        from ollabridge.ui import mount_ui
        app = mount_ui(app, gateway, settings)
    return app


def settle_heap() -> None:
    """Take everything built at start-up (FastAPI, pydantic, Gradio) out of the cyclic GC's view.

    A full collection walks every tracked object; with ~200k of them from start-up it paused the
    event loop ~150 ms at a time while 1,000 streams were open (bench figure 4: p99 added gap
    ~100 ms before, ~10 ms after). Fewer, larger young collections cut the collector's time again.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(_GC_YOUNG, 20, 10)


_GC_YOUNG = 20_000  # allocations between young collections (CPython's default: 700)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per backend call drowns the log


class GracefulServer(uvicorn.Server):
    """uvicorn, plus a drain before its own shutdown: stop accepting connections, refuse new API
    requests (503), let those in flight finish for OLLABRIDGE_SHUTDOWN_TIMEOUT seconds, end the rest
    with an error event, tell GPU nodes (`goaway`, then close 1012). Without it uvicorn would close
    the nodes' sockets at once and cut their streams."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config)
        self.gateway = gateway

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)  # the app's lifespan has run: the start-up heap is built
        settle_heap()

    async def shutdown(self, sockets=None) -> None:
        for server in self.servers:
            server.close()  # stop accepting; uvicorn's shutdown below closes them again (a no-op)
        if not self.force_exit:
            try:
                result = await self.gateway.drain.run(self.gateway.settings.shutdown_timeout, self.gateway.hub)
                logging.getLogger("ollabridge").info("drained: %s", result)
            except Exception:  # noqa: BLE001 - never block the shutdown itself
                logging.getLogger("ollabridge").exception("graceful drain failed")
        await super().shutdown(sockets)


def serve(settings: Settings) -> None:
    """Run the gateway with uvicorn, shutting down gracefully on SIGTERM/SIGINT."""
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                            access_log=False,  # the edge writes one structured line per request instead
                            # X-Forwarded-For is trusted only as OLLABRIDGE_FORWARDED_HOPS says (the edge);
                            # uvicorn's own default would take it from any caller on loopback.
                            proxy_headers=False,
                            timeout_graceful_shutdown=2)  # after the drain: only the UI's connections are left
    GracefulServer(config, app.state.gateway).run()
