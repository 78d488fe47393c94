"""What the HTTP routes share: one context object built by the app factory, the service's
readiness, and the ownership checks every route that names a user or chunk makes."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import attrs
from quart import current_app, g

from ..errors import NotFound

if TYPE_CHECKING:
    from ..config import Config
    from ..metrics import Metrics
    from ..pipeline.pipeline import Ingress
    from ..store import StoreBackend
    from .access import Access
    from .ws import WsContext


@attrs.define
class Readiness:
    """What ``/readyz`` reports: each part of the service sets its flag when it is up."""

    store: bool = False
    pipeline: bool = False
    http: bool = False
    draining: bool = False
    store_problem: str | None = None  # why a cluster store cannot serve now (None: it can)

    @property
    def ready(self) -> bool:
        ok = self.store and self.pipeline and self.http and not self.draining
        return ok and self.store_problem is None

    def note_store(self, problem: str | None) -> None:
        """The store's health changed (the backend's ``on_health``)."""
        self.store_problem = problem


@attrs.frozen
class AppContext:
    """Everything the routes use; built once by ``create_app`` (no module-level state).

    *ws* is the WebSocket sessions' context (the hub, the finalizer, the shutdown event),
    shared with the dedicated listener; *access* is the same tokens and rate limit object
    the WebSocket sessions use."""

    config: Config
    store: StoreBackend
    ingress: Ingress
    metrics: Metrics
    readiness: Readiness
    ws: WsContext
    access: Access


class HasContext:
    """The app side: ``create_app``'s app carries its context."""

    ctx: AppContext


def context() -> AppContext:
    """The context of the app serving this request."""
    return cast(HasContext, current_app).ctx


def owned(owner: str, what: str) -> None:
    """Another user's data is reported missing: its existence must not leak."""
    user = g.get("user_id")
    if user is not None and owner != user:
        raise NotFound(f"no {what}")


def chunk_owner(chunk_id: str) -> None:
    """``NotFound`` for another user's chunk (nothing for an unknown one: the read says)."""
    owner = context().store.owner(chunk_id)
    if owner is not None:
        owned(owner, f"chunk {chunk_id!r}")
