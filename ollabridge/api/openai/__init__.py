"""OpenAI's wire family: `protocol` (request and response models), `convert` (pure converters to and
from the canonical Ollama body and chunks) and `routes` (`/v1/...`, also under `/ollama`)."""
