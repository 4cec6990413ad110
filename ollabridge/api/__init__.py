"""Wire families and the gateway's own routes.

- `openai/`, `ollama/` (and Anthropic next): each with its protocol models, pure converters and routes;
- `errors`: errors in the caller's format; `streaming` and `sse_response`: writing router streams
  as NDJSON or SSE (with keep-alives); `openapi`: what /openapi.json documents beyond the routes;
- `system_routes` (/health, /ollama/status), `device_routes` (pairing), `relay_routes` (the node
  socket), `node_routes` (the agent as a wheel and a tarball), `admin_routes` (API keys, /metrics).
"""
