"""The HTTP port while a cluster store starts: probes answered, everything else refused.

A node on a JetStream cluster cannot serve until the cluster has a meta leader and the node
has replayed the stream, which can take seconds (a fresh cluster) or longer (a big stream).
Meanwhile ``serve_while_starting`` holds the HTTP port: ``/healthz`` answers 200 (the process
is alive), ``/readyz`` 503 with the reason in ``store_problem`` (connecting, waiting for the
meta leader, replaying), and any other request 503 ``unavailable`` with ``Retry-After``, so a
load balancer sees a node starting rather than a refused connection. Once the store is
ready the caller cancels it, and the real server binds the same port.

The listener under it is ``probe_port.serve_answers`` (also the asr-worker's probe port). Plain
HTTP only (the service skips this when it serves TLS).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from ..errors import StoreUnavailable
from ..probe_port import response, serve_answers
from .context import Readiness


def answer(path: str, problem: str, retry_s: int) -> bytes:
    """The whole response to a request for *path* while the store starts (*problem*)."""
    if path == "/healthz":
        return response(200, {"status": "ok"}, "application/json", retry_s)
    if path == "/readyz":  # the fields the running node's /readyz has, none of them up yet
        body = {"status": "not_ready", **attrs.asdict(Readiness(store_problem=problem))}
        return response(503, body, "application/json", retry_s)
    refusal = StoreUnavailable(f"the node is starting: {problem}", retry_after=retry_s)
    return response(503, refusal.problem(instance=path), "application/problem+json", retry_s)


async def serve_while_starting(
    host: str,
    port: int,
    problem: Callable[[], str],
    retry_s: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer HTTP on *host*:*port* as the module docstring says until cancelled; reports
    the port bound (*port* 0 picks one)."""
    await serve_answers(host, port, lambda path: answer(path, problem(), retry_s),
                        task_status=task_status)  # fmt: skip
