"""The HTTP API's routes, one module per resource, each over the app's one context object
(``web/context.py``): ``probes`` (health, readiness, metrics, the OpenAPI document),
``uploads`` (``POST /upload``), ``chunks`` (``/chunks/{id}``, its audio, its deletion),
``sessions`` (listing, ``end``, server-sent ``events``), ``session_export`` (a session's
audio, transcript and deletion) and ``socket`` (the WebSocket protocol at ``/ws`` on the HTTP
port). Each registers its routes on the app."""
