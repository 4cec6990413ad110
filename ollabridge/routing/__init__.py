"""Which backend serves a request: membership and model cache, slots and the queue, serving with
retries before the first chunk."""

from ollabridge.routing.router import Router

__all__ = ["Router"]
