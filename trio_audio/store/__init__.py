"""Durable storage: the append-only segment log (``log``) and the in-memory index (``store``)."""
