"""The node agent: pairs a GPU machine with a gateway by code, then serves it over the relay.

It runs where only the stdlib, httpx and websockets are installed (a Colab node, a gaming PC),
so nothing here imports the gateway's side (FastAPI, pydantic, orjson, gradio). The relay
protocol both ends speak is `ollabridge.relay.protocol`.

- `cli.py`: `ollabridge node`: its flags (`add_arguments`) and `run`.
- `agent.py`: `NodeAgent.run`: pair, connect, reconnect with backoff; `Stop` and the exit codes.
- `credentials.py`: the gateway's URLs (`cloud_http`, `relay_url`) and the saved credential file.
- `pairing.py`: pairing by code, the node's side of the device flow (`pair`; `Denied`).
- `backoff.py`: how long to wait before trying the gateway again (1 s to 60 s, jittered).
- `session.py`: one WebSocket connection (`Session`): hello/welcome, reader, writer, heartbeat,
  the model-list watch.
- `ollama.py`: this machine's Ollama (`LocalOllama`): the client, the lean pool, the model list.
- `serving.py`: serving `req` frames from it (`Requests`): slots, credit, chat streams, cancel.
- `gpu.py`: the GPU's name and memory, from nvidia-smi.
- `banner.py`: what the user sees: the pairing code in big letters (`big`), plain lines (`say`).
- `package.py` (not part of the agent): the agent's files, as the `ollabridge-node` wheel and a tarball.
"""

from ollabridge import __version__

AGENT = f"ollabridge-node/{__version__}"  # how the node names itself to the gateway and to its Ollama
