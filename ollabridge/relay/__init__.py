"""The relay: GPU nodes dial out to the gateway over one WebSocket each (docs/relay-protocol.md).

- `protocol`: frame types, validation and close codes, shared by both ends (stdlib only);
- `hub`: the gateway's side, accepting node sockets and joining them to the router;
- `node_backend`: one connected node as a Backend (requests multiplexed, credit, cancel).
The node agent itself is `ollabridge.node`.
"""
