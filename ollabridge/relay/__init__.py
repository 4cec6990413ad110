"""GPU boost nodes over a WebSocket relay: the protocol both ends speak and the gateway's hub of nodes
(the node agent itself is `ollabridge.node`)."""
