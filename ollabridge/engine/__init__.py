"""The in-box engine: an Ollama-API server on llama-cpp-python, so a machine without Ollama still answers.

Run it as its own process: ``python -m ollabridge.engine [--host H] [--port P] [--model SPEC]``.
Modules: `model` (which GGUF, and its name), `llm` (llama.cpp in a worker thread, one generation at
a time), `prompts`/`sampling` (chat rendering, options, stop strings), `shapes`/`schemas` (Ollama
response and request bodies), `server` (the FastAPI app, `create_app`).
"""
