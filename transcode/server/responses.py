"""HTTP details shared by the resources: ETags, caching, byte ranges, URLs.

Stored objects never change (a conflicting copy goes elsewhere), so anything
derived from one instance is immutable: a strong ETag from the recorded
digests and a year of private caching (patient data: never `public`).
Study- and series-level answers change when instances arrive: they are
revalidated (`no-cache`) against an ETag over all their instances' digests.
"""

from __future__ import annotations

import re

from blake3 import blake3
from starlette.requests import Request
from starlette.responses import Response

from transcode.server.errors import Problem

IMMUTABLE = "private, max-age=31536000, immutable"
REVALIDATE = "private, no-cache"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def etag(*parts: str) -> str:
    key = "\0".join(parts).encode()
    return f'"{blake3(key).hexdigest()[:40]}"'


def cache_headers(tag: str, immutable: bool) -> dict[str, str]:
    return {"ETag": tag, "Cache-Control": IMMUTABLE if immutable else REVALIDATE}


def not_modified(request: Request, headers: dict[str, str]) -> Response | None:
    """304 when the client's If-None-Match holds this ETag."""
    header = request.headers.get("if-none-match")
    if not header:
        return None
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    if "*" in tags or headers["ETag"] in tags:
        return Response(status_code=304, headers=headers)
    return None


def ranged(request: Request, body: bytes | memoryview, media_type: str, headers: dict[str, str]) -> Response:
    """The whole body (200), or the one byte range asked for (206 with
    Content-Range), or 416. Ranges count bytes of this response body, as
    Cornerstone3D's byte-range loader expects. A Range with several ranges
    is answered with the whole body, as RFC 9110 allows."""
    headers = {**headers, "Accept-Ranges": "bytes"}
    header = request.headers.get("range")
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None or (request.headers.get("if-range") not in (None, headers.get("ETag"))):
        return Response(body, media_type=media_type, headers=headers)
    first, last = match.groups()
    size = len(body)
    if first:
        start, end = int(first), (min(int(last), size - 1) if last else size - 1)
    elif last:  # the final N bytes
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = 0, -1
    if start >= size or end < start:
        raise Problem(416, "range_not_satisfiable", f"the body is {size} bytes",
                      {"Content-Range": f"bytes */{size}"})
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return Response(body[start:end + 1], status_code=206, media_type=media_type, headers=headers)


def base_url(request: Request, prefix: str) -> str:
    """The service root as the client reached it (`transcode serve` trusts
    X-Forwarded-* from a proxy on the same host)."""
    return str(request.base_url).rstrip("/") + prefix
