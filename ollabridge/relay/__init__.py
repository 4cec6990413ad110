"""GPU boost nodes over a WebSocket relay: the protocol, the gateway's hub and the node agent."""
