"""OllaBridge: an OpenAI- and Ollama-compatible LLM gateway with GPU relay nodes."""

__version__ = "0.1.0"
