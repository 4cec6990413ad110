"""Ollama's native wire family: `protocol` (request models, checked then passed on as sent),
`convert` (the little that is converted) and `routes` (`/ollama/api/...`)."""
