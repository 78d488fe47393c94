"""The command line's HTTP: one request to the service, its answer or its problem, in words.

``http.client`` rather than ``urllib``: when a server refuses a body before reading it (413
over its size limit, 401, 429, 503), it answers and closes, and the client's next write fails
with a broken pipe or a reset. The answer is then already on its way: it is read and reported
(``413 payload_too_large: the body is over the 16777216 byte limit``), never the broken pipe.
The token, when given, only ever goes in the ``Authorization`` header.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import urllib.parse
from collections.abc import Iterable
from typing import Any, Final

DEFAULT_URL: Final = "http://127.0.0.1:8000"


class ServerError(Exception):
    """The service answered with an error (an RFC 9457 problem), or could not be reached."""

    def __init__(self, status: int, code: str, detail: str, retry_after: int | None = None):
        super().__init__(f"{status} {code}: {detail}" if status else detail)
        self.status = status
        self.code = code
        self.retry_after = retry_after


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    if parts.scheme == "https":
        context = ssl.create_default_context()
        return http.client.HTTPSConnection(parts.netloc, timeout=timeout, context=context), target
    if parts.scheme != "http":
        raise ServerError(0, "bad_url", f"not an http(s) URL: {url}")
    return http.client.HTTPConnection(parts.netloc, timeout=timeout), target


def open_request(
    url: str,
    token: str | None,
    method: str = "GET",
    body: bytes | Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 120,
) -> http.client.HTTPResponse:
    """Send one request; the response, open for reading (the caller closes it).

    ``ServerError`` with the problem's status, code and detail for a 4xx/5xx answer, or with
    status 0 when the server cannot be reached.
    """
    sent = dict(headers or {})
    if token:
        sent["Authorization"] = f"Bearer {token}"
    conn, target = _connection(url, timeout)
    try:
        try:
            conn.request(method, target, body=body, headers=sent)
        except (BrokenPipeError, ConnectionResetError) as exc:
            # Refused mid-body: the server's answer may be waiting to be read.
            try:
                response = conn.getresponse()
            except (OSError, http.client.HTTPException):
                detail = f"{url} closed the connection while the body was sent ({exc})"
                raise ServerError(0, "unreachable", detail) from None
        else:
            response = conn.getresponse()
    except ServerError:
        conn.close()
        raise
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ServerError(0, "unreachable", f"cannot reach {url}: {reason}") from None
    if response.status >= 400:
        try:
            problem = json.loads(response.read() or b"{}")
        except (ValueError, OSError):
            problem = {}
        finally:
            conn.close()
        if not isinstance(problem, dict):
            problem = {}
        retry = response.headers.get("Retry-After")
        raise ServerError(
            response.status,
            str(problem.get("code", f"http_{response.status}")),
            str(problem.get("detail", response.reason)),
            int(retry) if retry and retry.isdigit() else None,
        )
    return response


def send(
    url: str,
    token: str | None,
    method: str = "GET",
    body: bytes | Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 120,
) -> tuple[int, Any]:
    """One request; its status and JSON answer, or ``ServerError`` with the problem's code."""
    response = open_request(url, token, method, body, headers, timeout)
    try:
        return response.status, json.loads(response.read())
    except (OSError, http.client.HTTPException) as exc:
        raise ServerError(0, "unreachable", f"the answer from {url} broke off: {exc}") from None
    finally:
        response.close()


def server_flags(parser: argparse.ArgumentParser) -> None:
    """``--url`` and ``--token``, as every client command takes them."""
    parser.add_argument(
        "--url",
        default=os.environ.get("TRIO_AUDIO_URL", DEFAULT_URL),
        help=f"the service's HTTP address (default {DEFAULT_URL}; env TRIO_AUDIO_URL)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("TRIO_AUDIO_TOKEN"),
        help="bearer token, when the server has auth on (env TRIO_AUDIO_TOKEN)",
    )
