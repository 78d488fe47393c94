"""The network face of the service: the HTTP app (and, later, the WebSocket handler)."""
