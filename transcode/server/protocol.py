"""uvicorn's httptools protocol with the limits it lacks.

With httptools, uvicorn keeps every byte of a request head until the head
is complete and waits for it for ever: a client sending an endless header
grows the server's memory, and one sending a byte now and then holds a
connection (slowloris). `h11_max_incomplete_event_size` applies to h11 only.
This protocol answers 431 once the head passes `Limits.max_head_bytes` or
`max_headers` lines, closes a connection whose head is not complete within
`head_timeout` seconds, and one that sends nothing for `body_idle_timeout`
seconds while its body is read (the app sees the client gone), and a new
connection from an address that already has `connections_per_client` open
(without it, 4000 slowloris connections from one address filled uvicorn's
`limit_concurrency` and other clients got 503 until the head timeout
dropped them: benchmarks/hostile_probes.py); a proxy trusted with
`--forwarded-allow-ips` is not capped, since every client behind it has its
address. Responses are not timed: a slow reader is held back by flow
control, not buffered. Over TLS it also hands each request the
connection's client certificate (`security.tls`: the ASGI TLS extension,
which uvicorn does not fill).

The limits come from `TRANSCODE_SERVE_OPTIONS` (uvicorn builds the protocol
from a class with no arguments of ours), or are set on a subclass
(`bounded(limits)`), as tests do.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import os
from collections import Counter
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from transcode.limits import Limits
from transcode.security.tls import tls_extension
from transcode.server.app import SERVE_OPTIONS

log = logging.getLogger(__name__)


class _HeadTooLarge(Exception):
    """Raised in a parser callback: httptools stops, uvicorn calls `send_400_response`."""


class BoundedHttpTools(HttpToolsProtocol):
    """HttpToolsProtocol with a bounded request head and read timeouts."""

    limits: Limits | None = None
    #: Connections open per client address, in this process (one event loop).
    open_by_client: ClassVar[Counter[str]] = Counter()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if type(self).limits is None:
            options = json.loads(os.environ.get(SERVE_OPTIONS, "{}")).get("limits", {})
            type(self).limits = Limits.from_json(options)
        self.bounds: Limits = type(self).limits  # type: ignore[assignment]
        self._head_bytes = 0
        self._in_head = True
        self._reading = True
        self._refused = False
        self._too_large = False  # set by a parser callback before it raises _HeadTooLarge
        self._timer: asyncio.TimerHandle | None = None
        self._address: str | None = None
        self._tls: dict[str, Any] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and not _trusted_proxy(self.config, peer[0]):
            opened = type(self).open_by_client
            if opened[peer[0]] >= self.bounds.connections_per_client:
                log.info("%s: over %d connections open; closed", peer[0], self.bounds.connections_per_client)
                transport.abort()
                return
            self._address = peer[0]
            opened[self._address] += 1
        self._tls = tls_extension(transport)  # the client certificate, once per connection
        self._arm(self.bounds.head_timeout, "request head")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._address is not None:
            opened = type(self).open_by_client
            opened[self._address] -= 1
            if not opened[self._address]:
                del opened[self._address]
            self._address = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.parser is None or self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
        elif self._reading:
            self._arm(self.bounds.body_idle_timeout, "request body")
        super().data_received(data)
        if self._in_head and self._head_bytes > self.bounds.max_head_bytes and not self._refused:
            self.send_400_response("")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._tls is not None:
            self.scope["extensions"] = {"tls": self._tls}
        self._in_head, self._reading, self._head_bytes = True, True, 0
        if self._timer is None:  # a pipelined request: its head gets the whole time again
            self._arm(self.bounds.head_timeout, "request head")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= self.bounds.max_headers:
            self._too_large = True
            raise _HeadTooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size > self.bounds.max_head_bytes:
            self._too_large = True
            raise _HeadTooLarge
        self._in_head, self._head_bytes = False, 0
        self._arm(self.bounds.body_idle_timeout, "request body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._reading = False
        self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request it cannot parse: 431 where the head
        was too large (raised from a parser callback, or found here)."""
        if not (self._in_head and (self._head_bytes > self.bounds.max_head_bytes or self._too_large)):
            super().send_400_response(msg)
            return
        self._refused = True
        body = json.dumps({"error": "headers_too_large", "detail": f"the request head is over "
                           f"{self.bounds.max_head_bytes} bytes or {self.bounds.max_headers} lines"}).encode()
        self.transport.write(b"".join([STATUS_LINE[431], b"content-type: application/json\r\n",
                                       b"content-length: ", str(len(body)).encode(), b"\r\n",
                                       b"connection: close\r\n\r\n", body]))
        self.transport.close()

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expire, what)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, what: str) -> None:
        self._timer = None
        if self.transport is not None and not self.transport.is_closing():
            log.info("%s: no complete %s in time; connection closed", self.client, what)
            self.transport.close()


def _trusted_proxy(config: Config, host: str) -> bool:
    """Whether `host` is a proxy whose forwarded headers uvicorn trusts."""
    if not config.proxy_headers:
        return False
    allowed = config.forwarded_allow_ips
    return _allows(tuple(allowed.split(",") if isinstance(allowed, str) else allowed), host)


@functools.lru_cache(maxsize=1024)
def _allows(allowed: tuple[str, ...], host: str) -> bool:
    """`host` is in `allowed` (addresses and networks, or '*'), as uvicorn's ProxyHeadersMiddleware reads it."""
    if "*" in allowed:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host in allowed
    return any(address in ipaddress.ip_network(item.strip(), strict=False) for item in allowed if item.strip())


def bounded(limits: Limits) -> type[BoundedHttpTools]:
    """The protocol class with these `limits` (for a uvicorn Config's `http`)."""
    return type("BoundedHttpTools", (BoundedHttpTools,), {"limits": limits, "open_by_client": Counter()})

