"""Only our own pages and hosts: what keeps a web page elsewhere out when auth is off.

With auth off, anything that reaches the port can use it, and a browser lets any page reach
the loopback address: a page from another origin can open a WebSocket (browsers do not apply
CORS to them), send a "simple" cross-site POST (``text/plain``, a form), and, after DNS
rebinding (its own name resolved to 127.0.0.1), read every route as if it were same-origin.
So, with auth off (auth on needs a bearer token, which no page sends on its own):

- **Host.** A request whose ``Host`` is not a loopback name (``localhost``, 127.0.0.0/8,
  ``[::1]``), the address the service is bound to, or one of ``allowed_hosts`` is refused with
  421 ``misdirected_request``: a rebound name never matches. Bound to ``0.0.0.0`` (with
  ``allow_unauthenticated_remote``), the names clients use must be listed (or ``*``).
- **Origin.** A WebSocket handshake, or a request that changes something (POST, PUT, PATCH,
  DELETE), that carries an ``Origin`` other than the service's own is refused with 403
  ``forbidden_origin``. The service's own origin is a page it served: an allowed host name (as
  above) on the HTTP port, or on the port of the request's ``Host`` (a proxy in front).
  ``allowed_origins`` adds others (or ``*``).
- **No simple uploads.** An upload whose body is ``text/plain`` or
  ``application/x-www-form-urlencoded`` (what a page can post anywhere without asking, and
  what ``curl -d`` sends) is refused with 415 unless its ``Origin`` is allowed: send audio
  with its own type or ``application/octet-stream``.

Requests without ``Origin`` (curl, SDKs, the CLI) are not affected by the origin rules.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Final
from urllib.parse import urlsplit

import attrs

from ..audio.declared import parse_media_type
from ..config import Config
from ..errors import ForbiddenOrigin, MisdirectedRequest, ServiceError, UnsupportedMediaType

UNSAFE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SIMPLE_BODY_TYPES: Final = frozenset({"text/plain", "application/x-www-form-urlencoded"})
DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _names(text: str) -> frozenset[str]:
    return frozenset(part.strip().lower().rstrip("/") for part in text.split(",") if part.strip())


def is_loopback_name(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host(value: str) -> tuple[str, int | None]:
    """``Host`` header text -> (lowercased name without brackets, port or None)."""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8000
        name, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        name, sep, port = value.rpartition(":")
        if not sep or ":" in name:  # no port, or a bare IPv6 address
            name, port = value, ""
    return name.rstrip("."), int(port) if port.isdigit() else None


@attrs.define
class Origins:
    """The rules above; ``enforce`` False (auth on) lets everything through.

    ``http_ports`` are the ports pages are served from (the bound HTTP port, added once it is
    known): an origin on them is the service's own on the WebSocket listener too."""

    enforce: bool
    hosts: frozenset[str] = frozenset()
    origins: frozenset[str] = frozenset()
    bound: str = "127.0.0.1"
    http_ports: set[int] = attrs.field(factory=set)

    @classmethod
    def from_config(cls, config: Config, *, auth: bool) -> Origins:
        ports = {config.port} if config.port else set()
        return cls(
            enforce=not auth,
            hosts=_names(config.allowed_hosts),
            origins=_names(config.allowed_origins),
            bound=config.host.lower(),
            http_ports=ports,
        )

    def host_allowed(self, name: str) -> bool:
        return (
            "*" in self.hosts or name in self.hosts or name == self.bound or is_loopback_name(name)
        )

    def check_host(self, host: str | None) -> None:
        """421 when the ``Host`` names someone else (no ``Host``: HTTP/1.0, let through)."""
        if not self.enforce or host is None:
            return
        name, _ = split_host(host)
        if not self.host_allowed(name):
            msg = (f"this service does not answer for host {name[:100]!r} (auth is off); an "
                   "operator can allow it with --allowed-hosts")  # fmt: skip
            raise MisdirectedRequest(msg)

    def origin_allowed(self, origin: str, host: str | None, *, listener: bool = False) -> bool:
        origin = origin.strip().lower().rstrip("/")
        if "*" in self.origins or origin in self.origins:
            return True
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False  # "null" (a sandboxed page, a file), or not a web origin
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError:
            return False
        name = parts.hostname.rstrip(".")
        if not self.host_allowed(name):
            return False
        if port in self.http_ports:
            return True  # a page the service served, by any of its names
        if listener or host is None:
            return False
        _, host_port = split_host(host)
        return port == (host_port or DEFAULT_PORTS[parts.scheme])

    def check(
        self, method: str, path: str, headers: Mapping[str, str], *, listener: bool = False
    ) -> None:
        """Raise the refusal a request earns (*method* ``WEBSOCKET``: a WebSocket handshake)."""
        if not self.enforce:
            return
        host = headers.get("host")
        self.check_host(host)
        origin = headers.get("origin")
        unsafe = method == "WEBSOCKET" or method in UNSAFE_METHODS
        if (
            origin is not None
            and unsafe
            and not self.origin_allowed(origin, host, listener=listener)
        ):
            msg = (f"pages from {origin[:100]!r} may not use this service (auth is off); "
                   "an operator can allow them with --allowed-origins")  # fmt: skip
            raise ForbiddenOrigin(msg)
        if method == "POST" and path == "/upload":
            media_type, _ = parse_media_type(headers.get("content-type"))
            if media_type in SIMPLE_BODY_TYPES and not (
                origin is not None and self.origin_allowed(origin, host)
            ):
                msg = (f"an upload as {media_type} is refused: it is what any web page can "
                       "send without asking. Send the audio's own type (audio/wav, ...) or "
                       "application/octet-stream")  # fmt: skip
                raise UnsupportedMediaType(msg)

    def refusal(
        self, method: str, path: str, headers: Mapping[str, str], *, listener: bool = False
    ) -> ServiceError | None:
        try:
            self.check(method, path, headers, listener=listener)
        except ServiceError as error:
            return error
        return None


def header_map(raw: Iterable[tuple[str | bytes, str | bytes]]) -> dict[str, str]:
    """ASGI or trio-websocket headers (``[(name, value), ...]``, bytes or str) -> a dict with
    lowercased names (the last of a repeated name wins)."""
    out: dict[str, str] = {}
    for name, value in raw:
        text = name.decode("latin-1") if isinstance(name, bytes) else name
        out[text.lower()] = value.decode("latin-1") if isinstance(value, bytes) else value
    return out
