"""The request edge: what every API request passes through, in one place.

- `middleware`: the ASGI middleware (request id, keys, limits, timeouts, drain, metrics, log line);
- `context`: what the edge knows about one request (`RequestContext`), read by the routes;
- `auth`: bearer tokens and API-key checks; `keys`: the API keys (env and minted);
- `ratelimit`: requests a minute and in flight per identity;
- `metrics`: the Prometheus registry; `access_log`: the one JSON line per request;
- `body`: request-body size limit and JSON coercion;
- `drain`: graceful shutdown (requests in flight, the drain deadline).
"""
