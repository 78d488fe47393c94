"""The network face of the service.

``app`` (the HTTP API, quart-trio), ``ws`` (the WebSocket session protocol, a task a module,
and its transports: the trio-websocket listener and Quart's ``/ws``), ``messages`` (its
parsing, pure), ``access``
(tokens and rate limit, shared by both), ``auth`` (the tokens file and the rate limiter),
``media`` (container media types), ``openapi`` (the spec served at ``/openapi.json``).
"""
