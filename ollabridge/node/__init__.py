"""The node agent: pairs a GPU machine with a gateway by code, then serves it over the relay.

It runs where only the stdlib, httpx and websockets are installed (a Colab node, a gaming PC),
so nothing here imports the gateway's side (FastAPI, pydantic, orjson, gradio). The relay
protocol both ends speak is `ollabridge.relay.protocol`.

- `agent.py`: `NodeAgent` and what `python -m ollabridge node` runs.
- `credentials.py`: the gateway's URLs (`cloud_http`, `relay_url`) and the saved credential file.
- `gpu.py`: the GPU's name and memory, from nvidia-smi.
- `banner.py`: what the user sees: the pairing code in big letters (`big`), plain lines (`say`).
"""
