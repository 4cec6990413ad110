"""Anthropic's Messages wire family: `protocol` (request and answer models), `convert` (pure converters
to and from the canonical Ollama chat), `sse` (the event stream) and `routes` (`/v1/messages`, also
under `/ollama`, where Claude Code's ANTHROPIC_BASE_URL points)."""
