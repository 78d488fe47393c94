"""The process: one ``trio.run``, one root nursery holding store, pipeline and servers.

::

    serve(config)
    └─ root nursery
       ├─ signal watcher   SIGINT/SIGTERM -> shutdown event, then the drain deadline
       └─ service nursery
          ├─ store         lock data dir, replay the log, then the committer (its one writer)
          ├─ fan-out       store events -> watchers (rendered once) and transcriber
          └─ front nursery
             ├─ transcriber   worker processes, fed by the fan-out
             ├─ pipeline      stage pools joined by bounded channels, into the committer
             ├─ http server   hypercorn's trio worker serving the quart-trio app
             └─ ws listener   trio-websocket

Data flows one way: web -> pipeline -> store -> events -> watchers and transcriber; the
transcriber writes its results back as store updates.

Shutdown: the servers stop accepting and finish their requests, then close their ingress
clones; the pipeline drains stage by stage and closes its sender into the committer; the
transcriber stops (unfinished chunks stay pending). Then ``store.close`` ends the committer,
which writes the last batch, closes the event stream (the fan-out ends) and the log (fsynced)
and unlocks. ``drain_timeout_s`` bounds the whole drain (a deadline on the service nursery),
so a stuck drain cannot keep the process alive.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import ssl
import threading
from functools import partial
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import attrs
import trio
from hypercorn.config import Config as HyperConfig
from quart_trio import QuartTrio

from .asr.transcriber import Transcriber
from .backend import open_backend
from .budget import budget_gauge
from .config import Config, redacted
from .fanout import FanOut
from .hub import Hub
from .memory import message_limit
from .metrics import Metrics
from .pipeline.pipeline import Ingress, run_pipeline
from .store import StoreBackend
from .store.files import REAL_FILES, FileOps
from .web.access import Access
from .web.admission import Admission
from .web.app import Readiness, create_app
from .web.asgi import FrontDoor
from .web.auth import RateLimiter, TokensFile
from .web.bodies import BodyRules
from .web.http_server import serve_hypercorn
from .web.origins import Origins, is_loopback_name
from .web.waiting import serve_while_starting
from .web.watchers import Watchers
from .web.ws import WsContext, serve_ws

logger = logging.getLogger("trio_audio")

HARD_STOP_S: Final = 1.0  # after a second signal, the most the process may take to leave


@attrs.frozen
class Running:
    """What a started service tells its starter: where it listens and its parts."""

    http_url: str
    ws_url: str
    store: StoreBackend
    metrics: Metrics
    readiness: Readiness
    limiter: trio.CapacityLimiter
    transcriber: Transcriber | None = None
    app: QuartTrio | None = None
    hub: Hub | None = None


async def watch_signals(
    shutdown: trio.Event, service_scope: trio.CancelScope, drain_timeout_s: float
) -> None:
    """Turn SIGINT/SIGTERM/SIGHUP into *shutdown*; a second signal cancels the drain at once,
    and ends the process ``HARD_STOP_S`` later if something would not be cancelled.

    SIGHUP is left alone when the process started with it ignored (``nohup``).
    """
    wanted = [signal.SIGINT, signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
        wanted.append(signal.SIGHUP)
    with trio.open_signal_receiver(*wanted) as signals:
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
            break
        else:
            return
    # Cancelling unwinds everything that can be cancelled. What cannot (a thread mid-call, a
    # write the kernel will not take, a task that never yields) gets HARD_STOP_S, then the
    # process leaves as a kill would: what was acknowledged is on disk already.
    backstop = threading.Timer(HARD_STOP_S, _hard_exit, (128 + signum,))
    backstop.daemon = True
    backstop.start()
    try:
        await trio.sleep_forever()  # the root nursery cancels this once the service is done
    finally:
        backstop.cancel()


def _hard_exit(code: int) -> None:
    logger.error("still not stopped %g s after the second signal: exiting now", HARD_STOP_S)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(code)


async def stop_while_starting(
    shutdown: trio.Event, readiness: Readiness, service_scope: trio.CancelScope
) -> None:
    """A stop asked for before the store is up (a cluster that does not answer, refused
    credentials) ends the service at once: nothing was accepted, so nothing is to drain."""
    await shutdown.wait()
    if not readiness.store:
        logger.info("stopping before the store started")
        service_scope.cancel()


async def serve_http(
    config: Config,
    app: QuartTrio,
    ingress: Ingress,
    shutdown: trio.Event,
    admission: Admission | None = None,
    metrics: Metrics | None = None,
    *,
    origins: Origins | None = None,
    access: Access | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Hypercorn's trio worker on ``config.host:config.port`` until *shutdown*.

    The app is served behind the front door (``web/asgi.py``): a refusal never leaves its
    keep-alive connection hung, and once *shutdown* is set, idle connections close, requests
    in flight get their answers with ``Connection: close``, and new ones get 503.

    Resource handling: owns its *ingress* clone and closes it once the server has finished
    its in-flight requests, which lets the pipeline drain.
    """
    hyper = HyperConfig()
    hyper.bind = [f"{config.host}:{config.port}"]
    hyper.graceful_timeout = config.drain_timeout_s
    hyper.accesslog = None
    hyper.errorlog = logging.getLogger("hypercorn.error")
    hyper.websocket_max_message_size = message_limit(config)
    hyper.read_timeout = max(1, round(config.read_timeout_s))
    # An idle keep-alive connection is a socket read too. Hypercorn's default (5 s) is httpx's
    # own idle expiry: a client would often send into a connection just being closed.
    hyper.keep_alive_timeout = config.read_timeout_s
    if config.certfile:
        hyper.certfile, hyper.keyfile = config.certfile, config.keyfile or None
    async with ingress:
        bodies = BodyRules.from_config(config)
        if metrics is not None:
            metrics.gauge("trio_audio_body_bytes", lambda: budget_gauge(bodies.budget))
        door = FrontDoor(app, shutdown, retry_after_s=config.retry_after_s, admission=admission,
                         metrics=metrics, bodies=bodies,
                         origins=origins, access=access, ingress=ingress)  # fmt: skip
        await serve_hypercorn(
            door,
            hyper,
            shutdown_trigger=shutdown.wait,
            task_status=task_status,
        )


def admission_gauge(admission: Admission) -> dict[str, float]:
    """Uploads inside, waiting for a slot, admitted and refused so far, the last queueing
    delay, whether the gate is refusing new arrivals at once (overloaded), and refusals held
    by the per-connection pacing (now, and so far)."""
    stats = admission.statistics()
    return {
        'state="inside"': stats.inside,
        'state="waiting"': stats.waiting,
        'state="admitted_total"': stats.admitted,
        'state="refused_total"': stats.refused,
        'state="queue_delay_seconds"': round(stats.last_delay_s, 6),
        'state="overloaded"': float(stats.overloaded),
        'state="held"': stats.held,
        'state="paced_total"': stats.paced,
    }


def security(config: Config) -> tuple[TokensFile | None, ssl.SSLContext | None]:
    """The tokens (None: auth off) and TLS context (None: plain) the config asks for."""
    tokens = None
    if config.tokens_file:
        try:
            tokens = TokensFile(Path(config.tokens_file))
        except OSError as exc:
            msg = f"cannot read the tokens file {config.tokens_file}: {exc.strerror}"
            raise ValueError(msg) from None
    elif not is_loopback_name(config.host) and not config.allow_unauthenticated_remote:
        msg = (
            f"refusing to serve {config.host} with auth off: anyone who can reach it could "
            "read every user's audio. Set --tokens-file (trio-audio token add USER makes one), "
            "or pass --allow-unauthenticated-remote to serve it open anyway"
        )
        raise ValueError(msg)
    if bool(config.certfile) != bool(config.keyfile):
        msg = "TLS needs both --certfile and --keyfile"
        raise ValueError(msg)
    tls = None
    if config.certfile:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            tls.load_cert_chain(config.certfile, config.keyfile)
        except (OSError, ssl.SSLError) as exc:
            msg = f"cannot load the TLS certificate or key: {exc}"
            raise ValueError(msg) from None
    return tokens, tls


async def start_store(config: Config, store: StoreBackend, nursery: trio.Nursery) -> Config:
    """Start *store* in *nursery* (ready once replayed). A cluster store can take a while (a
    meta leader to elect, a stream to replay): meanwhile the HTTP port answers the probes
    (``/readyz`` 503 with the reason) and refuses the rest (``web/waiting.py``). The config
    to serve with: its port is the one held meanwhile, when it asked for any (0)."""
    if not store.starts_slowly or config.certfile:
        await nursery.start(store.run)
        return config

    def problem() -> str:
        return store.health or "starting"

    async with trio.open_nursery() as waiting:
        port = await waiting.start(
            serve_while_starting, config.host, config.port, problem, config.retry_after_s
        )
        logger.info("answering probes on http://%s:%d while the store starts", config.host, port)
        await nursery.start(store.run)
        waiting.cancel_scope.cancel()
    return attrs.evolve(config, port=port)


# The collector's young generation is collected every this many allocations (CPython's
# default is 700: a chunk's road makes thousands of short-lived objects), the middle one
# every GC_OLDER young collections (default 10).
GC_YOUNG: Final = 10_000
GC_OLDER: Final = 20


def settle_heap() -> None:
    """What start-up made (modules, models, the replayed index) leaves the collector's sight
    (``gc.freeze``), and young objects are collected every ``GC_YOUNG`` allocations, not
    every 700. Counted at a node's ceiling, the collector had taken ~10% of the CPU per
    upload, most of it re-scanning what start-up made; side by side this cut a local node's
    CPU per upload by 10-19% (docs/performance.md). Every object made later is still
    collected, in larger batches; what start-up made is freed by reference counting as
    before, but a cycle among those objects is never collected (at most what start-up
    made). For a process that is the service's alone (``trio-audio serve``), once started,
    before its front door opens."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, GC_OLDER, 10)


async def serve(
    config: Config,
    *,
    shutdown: trio.Event | None = None,
    files: FileOps = REAL_FILES,
    own_process: bool = False,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the service until *shutdown* is set or a signal arrives, then drain and return.
    With *own_process* (the process is the service's alone) its heap is settled once it
    serves (``settle_heap``).

    Raises ``ValueError`` before starting anything when the security settings do not hold
    together (an unreadable tokens file, TLS half set up, or an open network address with
    auth off and no explicit ``allow_unauthenticated_remote``).
    """
    tokens, tls = security(config)
    shutdown = trio.Event() if shutdown is None else shutdown
    metrics = Metrics()
    limiter = trio.CapacityLimiter(config.cpu_threads)
    readiness = Readiness()
    hub = Hub(config.ws_queue)
    watchers = Watchers(hub)  # what the hub's subscribers get: store events, live results
    backend = open_backend(config, metrics, files, watchers, readiness.note_store)
    store, cluster = backend.store, backend.work  # cluster: transcription shared with nodes
    events = store.events()
    async with trio.open_nursery() as root:
        async with trio.open_nursery() as service:
            root.start_soon(watch_signals, shutdown, service.cancel_scope, config.drain_timeout_s)
            service.start_soon(stop_while_starting, shutdown, readiness, service.cancel_scope)
            config = await start_store(config, store, service)
            readiness.store = True
            transcriber = Transcriber(config, store, cluster.live if cluster else watchers,
                                      metrics, limiter)  # fmt: skip
            taker = cluster.taker if cluster else transcriber
            fan = FanOut(events, watchers, taker)
            watchers.after_pending = fan.after_pending  # session_end after what came before
            service.start_soon(fan.run)
            try:
                async with trio.open_nursery() as front:
                    await front.start(transcriber.run)
                    if cluster is not None:
                        await front.start(partial(cluster.run, transcriber))
                    ingress = await front.start(
                        run_pipeline, config, store.open_writes(), metrics, limiter
                    )
                    readiness.pipeline = True
                    async with ingress:  # each server owns a clone; the pipeline ends with the last
                        http_ingress, ws_ingress = ingress.clone(), ingress.clone()
                    rate = RateLimiter(config.rate_limit_per_s, config.rate_limit_burst)
                    access = Access(tokens, rate)  # one for HTTP and WebSocket alike
                    finalizer = cluster if cluster is not None else transcriber
                    origins = Origins.from_config(config, auth=tokens is not None)
                    ws = WsContext(config, store, hub, metrics, shutdown, finalizer, access,
                                   origins=origins, watchers=watchers)  # fmt: skip
                    app = create_app(
                        config, store, http_ingress, metrics, readiness, ws, access, limiter
                    )
                    metrics.gauge(
                        "trio_audio_store_chunks",
                        lambda: {f'store="{store.stats().backend}"': store.stats().chunks},
                    )
                    metrics.gauge("trio_audio_ws_sessions", lambda: {'transport="all"': ws.active})
                    admission = Admission(config.admit_max, max_wait_s=config.admit_wait_s,
                                          retry_after_s=config.retry_after_s)  # fmt: skip
                    metrics.gauge("trio_audio_admission", lambda: admission_gauge(admission))
                    if own_process:
                        settle_heap()  # (before the front door opens: a full collection)
                    binds = await front.start(
                        partial(serve_http, origins=origins, access=access),
                        config, app, http_ingress, shutdown, admission, metrics,
                    )  # fmt: skip
                    origins.http_ports.update(urlsplit(bind).port or 0 for bind in binds)
                    ws_port = await front.start(serve_ws, ws, ws_ingress, tls)
                    ws_url = f"{'wss' if tls else 'ws'}://{config.host}:{ws_port}/ws"
                    readiness.http = True
                    where = redacted(config.store) or str(config.data_dir.resolve())
                    logger.info("serving HTTP on %s, data in %s", ", ".join(binds), where)
                    logger.info("serving WebSocket on %s", ws_url)
                    running = Running(
                        binds[0], ws_url, store, metrics, readiness, limiter, transcriber, app, hub
                    )
                    task_status.started(running)
                    await shutdown.wait()
                    readiness.draining = True
                    transcriber.stop()  # what it has not done stays pending: queued at start
                    if cluster is not None:
                        cluster.stop()  # its leases are given back: others take over at once
            finally:
                store.close()  # the committer ends once the pipeline's sender is closed too
        if service.cancel_scope.cancelled_caught and readiness.store:
            logger.warning("the drain passed its %g s deadline", config.drain_timeout_s)
        logger.info("stopped; %d chunks stored", store.stats().chunks)
        root.cancel_scope.cancel()
