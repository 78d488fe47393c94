"""The process: one ``trio.run``, one root nursery holding store, pipeline and servers.

::

    serve(config)
    └─ root nursery
       ├─ signal watcher   SIGINT/SIGTERM -> shutdown event, then the drain deadline
       └─ service nursery
          ├─ store         lock data dir, replay the log  (started once replayed)
          ├─ pipeline      stage pools joined by bounded channels, then the store writer
          └─ http server   hypercorn's trio worker serving the quart-trio app

Shutdown: the HTTP server stops accepting and finishes its requests, then closes its ingress
clone; the pipeline drains stage by stage; the store writer commits the last batch; the store
fsyncs and unlocks. ``drain_timeout_s`` bounds the whole drain (a deadline on the service
nursery), so a stuck drain cannot keep the process alive.
"""

from __future__ import annotations

import logging
import signal

import attrs
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve as hypercorn_serve
from quart_trio import QuartTrio

from .config import Config
from .hub import Hub
from .metrics import Metrics
from .pipeline.pipeline import Ingress, run_pipeline
from .store.store import Store
from .web.app import Readiness, create_app

logger = logging.getLogger("trio_audio")


@attrs.frozen
class Running:
    """What a started service tells its starter: where it listens and its parts."""

    http_url: str
    store: Store
    metrics: Metrics
    readiness: Readiness
    limiter: trio.CapacityLimiter


async def watch_signals(
    shutdown: trio.Event, service_scope: trio.CancelScope, drain_timeout_s: float
) -> None:
    """Turn SIGINT/SIGTERM into *shutdown*; a second signal cancels the drain at once."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def first_signal() -> None:
                async for signum in signals:
                    logger.info("%s received: draining", signal.Signals(signum).name)
                    shutdown.set()
                    break

            nursery.start_soon(first_signal)
            await shutdown.wait()
            nursery.cancel_scope.cancel()
        service_scope.deadline = min(service_scope.deadline, trio.current_time() + drain_timeout_s)
        async for signum in signals:
            logger.warning("%s received again: stopping now", signal.Signals(signum).name)
            service_scope.cancel()
            return


async def serve_http(
    config: Config,
    app: QuartTrio,
    ingress: Ingress,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Hypercorn's trio worker on ``config.host:config.port`` until *shutdown*.

    Resource handling: owns its *ingress* clone and closes it once the server has finished
    its in-flight requests, which lets the pipeline drain.
    """
    hyper = HyperConfig()
    hyper.bind = [f"{config.host}:{config.port}"]
    hyper.graceful_timeout = config.drain_timeout_s
    hyper.accesslog = None
    hyper.errorlog = logging.getLogger("hypercorn.error")
    async with ingress:
        await hypercorn_serve(app, hyper, shutdown_trigger=shutdown.wait, task_status=task_status)


async def serve(
    config: Config,
    *,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the service until *shutdown* is set or a signal arrives, then drain and return."""
    shutdown = trio.Event() if shutdown is None else shutdown
    metrics = Metrics()
    limiter = trio.CapacityLimiter(config.cpu_threads)
    readiness = Readiness()
    hub = Hub(config.ws_queue)
    store = Store(config, hub)
    async with trio.open_nursery() as root:
        async with trio.open_nursery() as service:
            root.start_soon(watch_signals, shutdown, service.cancel_scope, config.drain_timeout_s)
            await service.start(store.run)
            readiness.store = True
            ingress = await service.start(run_pipeline, config, store, metrics, limiter)
            readiness.pipeline = True
            async with ingress:  # each server owns a clone; the pipeline ends with the last
                http_ingress = ingress.clone()
            app = create_app(config, store, http_ingress, metrics, readiness)
            metrics.gauge("trio_audio_store_chunks", lambda: {'store="local"': len(store.chunks)})
            binds = await service.start(serve_http, config, app, http_ingress, shutdown)
            readiness.http = True
            logger.info("serving HTTP on %s, data in %s", ", ".join(binds), config.data_dir)
            task_status.started(Running(binds[0], store, metrics, readiness, limiter))
            await shutdown.wait()
            readiness.draining = True
        if service.cancel_scope.cancelled_caught:
            logger.warning("the drain passed its %g s deadline", config.drain_timeout_s)
        logger.info("stopped; %d chunks stored", len(store.chunks))
        root.cancel_scope.cancel()
