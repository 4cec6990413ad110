"""Ollama's native wire family: `protocol` (request models, checked then passed on as sent) and
`routes` (`/ollama/api/...`)."""
