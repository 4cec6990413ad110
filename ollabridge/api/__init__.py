"""Wire formats: OpenAI's, Ollama's native, the system routes and the device flow."""
