"""Everything NATS, in layers (each module imports only those below it):

- the bridge: ``bridge.py`` (the one hop into asyncio, the errors, what the loop delivers),
  ``calls.py`` (the JetStream calls) and ``connect.py`` (connecting; ``Nats``);
- the JetStream store backend: ``jetstream.py`` (``JetStreamStore``) over ``stream.py``,
  ``follow.py``, ``commit.py``, ``publish.py``, ``reads.py`` and ``observe.py``;
- transcription work shared across nodes: ``work.py`` (``Cluster``) over ``partitions.py``,
  ``leases.py``, ``take.py``, ``relay.py`` and ``finalize.py``; ``worker.py`` is the
  ``asr-worker`` process;
- the development cluster tool: ``dev.py`` (``python -m trio_audio.cluster.dev DIR``).

Nothing outside this package imports it except the one place that opens a store from
``--store`` (``trio_audio/backend.py``) and the CLI's ``asr-worker`` command.
"""
