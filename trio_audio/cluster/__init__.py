"""Everything NATS: the JetStream store backend (``jetstream.py``), the bridge that runs the
asyncio-only nats-py client inside ``trio.run`` (``bridge.py``, the one module that sees
asyncio), transcription work shared across nodes (``work.py``) and the development cluster
tool (``dev.py``: ``python -m trio_audio.cluster.dev DIR``).

Nothing outside this package imports it except the one place that opens a store from
``--store`` (``trio_audio/backend.py``) and the CLI's ``asr-worker`` command.
"""
