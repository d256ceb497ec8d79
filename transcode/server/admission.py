"""Limits checked on every request before any route runs.

`LimitsMiddleware` wraps the whole application, so that the raw frames route
(which bypasses FastAPI) is held to the same limits as every other: the
request target's length, the count and size of header lines, the count of
query keys, the `Host` header (against DNS rebinding: a page on another
name that resolves to this server must not read it), the body size of an
upload and the requests in flight per client. What it refuses is answered
as the app's other errors are, `{"error": reason, "detail": sentence}`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from transcode.limits import Limits
from transcode.server.errors import Problem

log = logging.getLogger(__name__)


def refusal(scope: Scope, limits: Limits) -> Problem | None:
    """Why the request in `scope` is refused before it runs, or None."""
    target = len(scope.get("raw_path") or scope["path"].encode()) + len(scope.get("query_string", b""))
    if target > limits.max_url_bytes:
        return Problem(414, "url_too_long", f"the request target is over {limits.max_url_bytes} bytes")
    headers = scope["headers"]
    if len(headers) > limits.max_headers:
        return Problem(431, "too_many_headers", f"at most {limits.max_headers} header lines")
    if target + sum(len(n) + len(v) + 4 for n, v in headers) > limits.max_head_bytes:
        return Problem(431, "headers_too_large", f"the request head is over {limits.max_head_bytes} bytes")
    query = scope.get("query_string", b"")
    if query and query.count(b"&") + 1 > limits.max_query_keys:
        return Problem(400, "too_many_query_keys", f"at most {limits.max_query_keys} query parameters")
    if limits.allowed_hosts:
        hosts = [v for n, v in headers if n == b"host"]
        if len(hosts) != 1 or hosts[0].decode("latin-1").lower() not in limits.allowed_hosts:
            return Problem(400, "host_not_allowed", "this server does not answer for that Host; see --allowed-host")
    length = next((v for n, v in headers if n == b"content-length"), None)
    if length is not None and (not length.isdigit() or int(length) > limits.max_upload_bytes):
        return Problem(413, "body_too_large", f"request bodies are at most {limits.max_upload_bytes} bytes")
    return None


class LimitsMiddleware:
    """Refuses what `refusal` finds, counts a body's bytes as they arrive
    (a chunked upload has no Content-Length) and bounds the requests in
    flight per client address."""

    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app = app
        self.limits = limits
        self.in_flight: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if (refused := refusal(scope, self.limits)) is not None:
            await _answer(send, refused)
            return
        client = (scope.get("client") or ("", 0))[0]
        if self.in_flight[client] >= self.limits.per_client:
            await _answer(send, Problem(429, "too_many_requests",
                                        f"at most {self.limits.per_client} requests at once per client",
                                        {"Retry-After": "1"}))
            return
        self.in_flight[client] += 1
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limits.max_upload_bytes:
                    raise Problem(413, "body_too_large",
                                  f"request bodies are at most {self.limits.max_upload_bytes} bytes")
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except Problem as refused_late:
            if started:
                raise
            await _answer(send, refused_late)
        finally:
            self.in_flight[client] -= 1
            if not self.in_flight[client]:
                del self.in_flight[client]


async def _answer(send: Send, refused: Problem) -> None:
    log.info("refused (%s): %s", refused.reason, refused.detail)
    body = json.dumps({"error": refused.reason, "detail": refused.detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    headers += [(k.lower().encode(), v.encode()) for k, v in refused.headers.items()]
    await send({"type": "http.response.start", "status": refused.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
