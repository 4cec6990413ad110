"""The end of every observed request: its metrics and its one JSON log line (`ollabridge.access`).

Never a prompt or a completion unless OLLABRIDGE_LOG_CONTENT=1.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.types import Scope

from ollabridge.edge.context import RequestContext
from ollabridge.jsonwire import dumps

access_log = logging.getLogger("ollabridge.access")

# Requests refused before routing keep their path as the label when it is one of these.
KNOWN_PATHS = frozenset({prefix + path for prefix in ("", "/ollama") for path in (
    "/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages", "/v1/messages/count_tokens",
    "/v1/embeddings", "/v1/models")} | {"/ollama/api/" + name for name in (
        "chat", "generate", "embed", "embeddings", "tags", "show", "ps", "version")} | {
    "/health", "/metrics", "/ollama/status"})
QUIET = ("/health", "/metrics")  # polled every few seconds: metrics only


def route_label(scope: Scope) -> str:
    """A bounded label: the path of a matched route (its template when it has parameters), a
    known API path for requests refused before routing, else "other"."""
    path = scope["path"]
    template = getattr(scope.get("route"), "path", None)
    if template is None:
        return path if path in KNOWN_PATHS else "other"
    if "{" not in template:
        return path
    fixed = template.split("{", 1)[0]
    at = path.find(fixed)
    return path[:at] + template if at >= 0 else template


def finish(ctx: RequestContext, scope: Scope, metrics: Any, now: float, log_content: bool) -> None:
    """Record the request's metrics and write its log line."""
    route = route_label(scope)
    served = ctx.served
    backend = served.get("backend") or "none"
    done = served.get("done") or {}
    tokens_in = int(done.get("prompt_eval_count") or 0)
    tokens_out = int(done.get("eval_count") or 0)
    duration = now - ctx.started
    ttft = ctx.first_at - ctx.started if ctx.first_at is not None else None
    status = ctx.status or 500
    metrics.record(route, ctx.method, status, backend, served.get("kind") or "none", duration, ttft,
                   tokens_in, tokens_out)
    if ctx.path in QUIET or not access_log.isEnabledFor(logging.INFO):
        return
    line: dict[str, Any] = {"id": ctx.id, "method": ctx.method, "route": route, "status": status,
                            "model": ctx.model, "backend": served.get("backend"),
                            "duration_ms": round(duration * 1000, 1),
                            "ttft_ms": round(ttft * 1000, 1) if ttft is not None else None,
                            "tokens_in": tokens_in, "tokens_out": tokens_out, "client": ctx.client,
                            "key": ctx.key}
    if ctx.abort_reason:
        line["aborted"] = ctx.abort_reason
    if log_content:
        line["prompt"] = ctx.prompt
        line["completion"] = "".join(ctx.completion) if ctx.completion is not None else None
    # makeRecord + handle: a log line without logging's caller lookup (a third of its cost).
    access_log.handle(access_log.makeRecord(access_log.name, logging.INFO, __file__, 0, dumps(line).decode(),
                                            (), None))
