"""Backends: the places a request can be served (Ollama, extra upstreams, relay nodes)."""

from ollabridge.backends.base import Backend, BackendHealth
from ollabridge.backends.ollama import OllamaBackend

__all__ = ["Backend", "BackendHealth", "OllamaBackend"]
