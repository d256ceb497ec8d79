"""What authentication and the audit trail cost a frame request (issue 14:
frames/s with both on at least 0.9x with both off, in the same run).

The load test (server.py) serves the same archive from a third `transcode
serve` with `--auth-config` (an issuer whose key is made here; every request
carries one bearer token, verified once and then found in the token cache,
as a viewer's session is) and the audit trail on, against the open server
without a trail. Beside it: the same comparison in this process request by
request, and the cost of one audit line where the lines are made (the
trail's own process, in `serve`), written a line per batch (as under light
load: flushed per request) and 64 per batch;
and what the middleware adds to a request by part (`guard_cost`), around a
trivial endpoint where nothing else hides it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from transcode.archive import FolderArchive
from transcode.security.audit import AuditEvent, AuditLog, Chain, Touched, records, verify
from transcode.security.auth import AuthConfig, Authenticator
from transcode.security.guard import Guard, Security
from transcode.server import create_app

ISSUER, AUDIENCE = "https://idp.bench/realms/pacs", "transcode"


def identity(folder: Path) -> tuple[tuple[str, ...], str]:
    """(`serve` options turning authentication on, a read token valid for an hour)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (folder / "issuer.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (folder / "auth.toml").write_text(f'[oidc]\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"\n'
                                      f'key_file = "{folder / "issuer.pem"}"\n'
                                      f'[api_keys]\nfile = "{folder / "keys.json"}"\n')
    now = int(time.time())
    token = jwt.encode({"sub": "bench-viewer", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 3600, "iat": now,
                        "scope": "read"}, key, algorithm="RS256")
    return ("--auth-config", str(folder / "auth.toml")), token


def security_cost(store: FolderArchive, folder: Path, token: str,
                  alternating: Callable[..., dict[str, float]], repeats: int = 10) -> dict[str, float]:
    """Microseconds per frame request in this process, authentication and
    the trail on (`-secured`) and both off (`-open`), request by request."""
    config = AuthConfig.load(folder / "auth.toml", folder / "keys.json")
    with AuditLog(folder / "audit-in-process", catalog=store.root, separate=True) as audit:
        guarded = create_app(store, security=Security(Authenticator(config), audit))
        return alternating(store, ((guarded, {"Authorization": f"Bearer {token}"}), (create_app(store), {})),
                           ("-secured", "-open"), repeats)


def guard_cost(folder: Path, token: str, repeats: int = 15, requests: int = 2000) -> dict[str, float]:
    """Microseconds the security middleware adds to one frame request
    around a trivial endpoint: the guard alone (`guard_us`), with the cached
    token check (`auth_us`), with the audit trail as `serve` runs it
    (`audit_us`: what the request queues, and the writer thread's pickling
    and sending of it to the trail's process: each run ends with the trail
    flushed), with both (`both_us`); CPU time of this process (all its
    threads, not the writer's 20 ms waits, not the trail's process: its
    cost per line is `audit_line_cost`), best of `repeats` runs of
    `requests`, the variants interleaved so that all see the same machine."""
    path = "/dicomweb/studies/1.2.3/series/1.2.4/instances/1.2.5/frames/1"
    templates = ["/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/{frames}"]
    headers = [(b"host", b"bench"), (b"accept", b"*/*"), (b"authorization", f"Bearer {token}".encode())]

    async def endpoint(_: dict[str, Any], __: Callable[..., Any], send: Callable[..., Any]) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x"})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_: dict[str, Any]) -> None:
        pass

    async def measure(apps: dict[str, tuple[Any, AuditLog | None]]) -> dict[str, float]:
        best = dict.fromkeys(apps, float("inf"))
        for _ in range(repeats):
            for name, (app, trail) in apps.items():
                began = time.process_time()
                for _ in range(requests):
                    await app({"type": "http", "method": "GET", "path": path, "headers": headers,
                               "query_string": b"", "client": ("127.0.0.1", 1)}, receive, send)
                if trail is not None:
                    trail.flush()
                best[name] = min(best[name], (time.process_time() - began) / requests * 1e6)
        return {f"{name}_us": best[name] - best["bare"] for name in apps if name != "bare"}

    authenticator = Authenticator(AuthConfig.load(folder / "auth.toml", folder / "keys.json"))
    with AuditLog(folder / "audit-guard-cost", separate=True) as audit:
        return asyncio.run(measure({
            "bare": (endpoint, None), "guard": (Guard(endpoint, Security(), templates), None),
            "auth": (Guard(endpoint, Security(authenticator), templates), None),
            "audit": (Guard(endpoint, Security(None, audit), templates), audit),
            "both": (Guard(endpoint, Security(authenticator, audit), templates), audit)}))


def audit_line_cost(folder: Path, lines: int = 5000) -> dict[str, float]:
    """Microseconds per audit line where the lines are made (making the
    line, chaining, writing to the OS: in `serve`, the trail's own
    process), one line per batch and 64 per batch."""
    event = AuditEvent("bench-viewer", "127.0.0.1", "retrieve", "GET",
                       "/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/{frames}", 200, "success",
                       (Touched("1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2",
                                "1.2.826.0.1.3680043.8.498.3"),))
    results = {}
    chain = Chain(folder)
    try:
        for batch in (1, 64):
            began = time.perf_counter()
            for _ in range(lines // batch):
                chain.append([event] * batch)
            results[f"batch{batch}_us"] = (time.perf_counter() - began) / (lines // batch * batch) * 1e6
    finally:
        chain.close()
    results["line_bytes"] = (folder / "audit.jsonl").stat().st_size / (lines // 64 * 64 + lines)
    return results


def trail_lines(folder: Path) -> dict[str, Any]:
    """How many lines the secured server wrote, and whether the chain is whole."""
    result = verify(folder)
    return {"lines": sum(1 for _ in records(folder)), "problems": len(result.problems)}
