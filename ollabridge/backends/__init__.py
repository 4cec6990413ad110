"""Backends: the places a request is served (the gateway's Ollama or in-box engine, extra upstreams,
relay nodes), the one interface they speak (`base`), Ollama over HTTP (`ollama`) with its lean
HTTP/1.1 transport (`http1`), and the background model puller (`pulls`).

Nothing is imported here: the node agent imports `http1` with only the stdlib, httpx and websockets.
"""
