"""Which backend serves a request. `Router` (router.py) is the facade the gateway uses; its parts:

- `pool`: membership and the model cache: the backends, their model lists refreshed in the
  background with a TTL, the union of models, the default model, which backends serve a model
  (ModelNotFound, NoBackend when none answers), and the backends still starting that requests
  wait for (the in-box engine);
- `slots`: leasing: the best free backend by priority then load, within its slots, and the
  bounded wait queue with its timeout, first come first served (`notify` hands freed slots to
  the waiters in arrival order);
- `serve`: serving: one retry loop for streaming chat and one-shot calls (another backend before
  the first chunk reached the caller; after it, a stream is resumed on another backend), and the
  tokens each chat made;
- `resume`: the pure part of resuming: what a stream sent, the request that continues it, the
  splice of the continuation's chunks;
- `stall`: noticing a frozen backend from a stream's own pace (probe, then give it up);
- `affinity`: conversation affinity, the backend that served a request's prefix recently (its KV
  cache holds it), which slots prefers while it is free and not much slower.

Imports go one way: pool <- slots <- serve <- router; resume and stall are leaves serve uses,
affinity a leaf slots and serve use.
"""

from ollabridge.routing.router import Router

__all__ = ["Router"]
