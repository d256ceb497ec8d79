"""The ASGI middleware in front of every route: authentication, the scope a
method needs, the access log and the audit trail.

An ASGI middleware rather than a FastAPI dependency, because the frames
route is a plain Starlette route that FastAPI's dependencies never see.
CORS preflights (OPTIONS) pass unauthenticated: browsers send them without
credentials, and the CORS middleware outside answers them. The built-in
viewer's page and files (`GET /`, `/viewer/...`: code, no patient data)
pass too, so that a browser can load its sign-in form; everything it then
asks for needs the credential.

Mutual TLS (`serve --tls-client-ca`) proves which machine connects, not
what it may do: with authentication on, a request still needs a token or
an API key, and the trail names the token's subject or the key; with
authentication off, the certificate's subject (`cert:CN=...`) is the
caller the trail names, as it is for a refused request that sent no
credential.

The access log (logger `transcode.access`, replacing uvicorn's) writes the
route template (`/dicomweb/studies/{study}`), never the URL: UIDs and query
strings (patient names, birth dates) belong in the audit trail only.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from transcode.security.audit import AuditEvent, AuditLog, Touched
from transcode.security.auth import ADMIN, ANONYMOUS, AuthConfig, Authenticator, Denied, Principal, require
from transcode.security.tls import client_certificate

log = logging.getLogger(__name__)
access = logging.getLogger("transcode.access")

#: Where a route handler leaves the instances it stored (STOW-RS), for the trail: scope["state"][AUDIT_TOUCHED].
AUDIT_TOUCHED = "audit_touched"
_SEARCHES = ("/studies", "/series", "/instances")
VIEWER_FILES = "/viewer/"


@dataclass(frozen=True)
class Security:
    """What the middleware enforces and records: `authenticator` None
    means authentication off (everyone may do everything); `audit` None
    means no trail."""

    authenticator: Authenticator | None = None
    audit: AuditLog | None = None


class Guard:
    """The middleware (`app.add_middleware(Guard, security=...)`)."""

    def __init__(self, app: ASGIApp, security: Security, templates: Sequence[str] = ()) -> None:
        """`templates`: the application's route paths (`/dicomweb/studies/{study}`),
        in the order its router tries them: what the log and the trail name."""
        self.app = app
        self._patterns = [(compile_path(template)[0], template) for template in templates]
        self.authenticator, self.audit = security.authenticator, security.audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500  # unless a response starts

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        principal = _unauthenticated(scope)
        scope.setdefault("state", {})  # where handlers leave what the trail needs (AUDIT_TOUCHED)
        try:
            if self.authenticator is not None and scope["method"] != "OPTIONS" and not _public(scope):
                principal = await self._principal(scope)
                require(principal, scope["method"])
        except Denied as exc:
            principal = Principal(principal.who if exc.who == ANONYMOUS.who else exc.who, frozenset())
            headers = {"WWW-Authenticate": exc.challenge(self.authenticator.config.realm)}  # type: ignore[union-attr]
            await JSONResponse({"error": exc.reason, "detail": exc.detail}, exc.status, headers)(scope, receive,
                                                                                                    sending)
            self._done(scope, principal, status, began)
            return
        try:
            await self.app(scope, receive, sending)
        finally:
            self._done(scope, principal, status, began)

    async def _principal(self, scope: Scope) -> Principal:
        credential = Authenticator.credential(scope["headers"])
        principal = self.authenticator.cached(credential)  # type: ignore[union-attr]
        if principal is None:  # a signature to check, perhaps keys to fetch: off the event loop
            principal = await run_in_threadpool(self.authenticator.authenticate, credential)  # type: ignore[union-attr]
        return principal

    def _done(self, scope: Scope, principal: Principal, status: int, began: float) -> None:
        if access.isEnabledFor(logging.INFO):
            client = scope.get("client") or ("-", 0)
            template = _route(self._patterns, scope["path"])[0]
            access.info("%s %s %s %d %.1f ms", client[0], scope["method"], template, status,
                        (time.perf_counter() - began) * 1e3)
        if self.audit is not None and scope["method"] != "OPTIONS":
            # What the event needs, taken now, as plain values; the route is matched and the event made
            # where the line is written (in `serve`, the trail's own process: README, Cost).
            self.audit.record((request_event, self._patterns, scope["method"], scope["path"],
                               scope.get("query_string", b""), scope.get("client"),
                               (scope.get("state") or {}).get(AUDIT_TOUCHED), principal.who, status, time.time()))


def request_event(patterns: list[tuple[re.Pattern[str], str]], method: str, path: str, query: bytes,
                  client: tuple[str, int] | None, stored: list[Touched] | None, who: str, status: int,
                  when: float) -> AuditEvent:
    """The trail's event for a request that ended at `when` (called by the
    trail's writer, perhaps in its own process: a function of plain values)."""
    template, params = _route(patterns, path)
    if stored is not None:
        touched = tuple(stored)
    elif "study" in params:
        touched = (Touched(params.get("study"), params.get("series"), params.get("sop")),)
    else:
        touched = ()
    if method == "POST":
        action = "store"
    elif template.endswith(_SEARCHES):
        action = "search"
    elif "/rendered" in template or template.endswith("/thumbnail"):
        action = "render"
    elif "{study}" in template:
        action = "retrieve"
    else:
        action = "other"
    outcome = "success" if status < 400 else "denied" if status in (401, 403) else "failure"
    return AuditEvent(who, (client or ("", 0))[0], action, method, template, status, outcome, touched,
                      query.decode("latin-1") or None, when)


def _route(patterns: list[tuple[re.Pattern[str], str]], path: str) -> tuple[str, dict[str, Any]]:
    """The template `path` matches first and its parameters (a refused
    request never reaches the router; FastAPI's router does not leave the
    full template in the scope)."""
    for pattern, template in patterns:
        if (match := pattern.match(path)) is not None:
            return template, match.groupdict()
    return "(no route)", {}


def _public(scope: Scope) -> bool:
    """The built-in viewer's page and files (`viewer.mount`), read without a credential."""
    path = scope["path"]
    return scope["method"] in ("GET", "HEAD") and (path == "/" or path.startswith(VIEWER_FILES))


def _unauthenticated(scope: Scope) -> Principal:
    """Who a request is before any credential: its client certificate's
    subject over mutual TLS, else anonymous (all scopes, for authentication off)."""
    if "extensions" not in scope or (subject := client_certificate(scope)) is None:  # plain HTTP: at once
        return ANONYMOUS
    return Principal(f"cert:{subject}", frozenset({ADMIN}))


def security_from(options: dict[str, Any], catalog: str) -> Security:
    """The `Security` of one `transcode serve` worker, from the options the
    command passed (`auth_config`, `api_keys`, `audit`, `audit_max_bytes`,
    `audit_fsync`); `catalog`: the archive's (`open_catalog`'s argument),
    for the trail's patient ids."""
    authenticator = None
    if options.get("auth_config"):
        authenticator = Authenticator(AuthConfig.load(Path(options["auth_config"]), Path(options["api_keys"])))
    audit = None
    if options.get("audit"):
        audit = AuditLog(Path(options["audit"]), catalog=catalog, max_bytes=options.get("audit_max_bytes", 64 << 20),
                         fsync=options.get("audit_fsync", False), separate=True)
    return Security(authenticator, audit)
