"""The HTTP API's routes, one module per resource, each over the app's one context object
(``web/context.py``): ``probes`` (health, readiness, metrics, the OpenAPI document),
``uploads`` (``POST /upload``), ``chunks`` (``/chunks/{id}``, its audio, its deletion),
``sessions`` (listing, deletion, ``end``, server-sent ``events``) and ``socket`` (the
WebSocket protocol at ``/ws`` on the HTTP port). Each has a ``register(app)``."""
