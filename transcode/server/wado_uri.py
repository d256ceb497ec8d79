"""WADO-URI (PS3.18 9): the URL form that older viewers, RIS and EMR links
and IHE XDS-I consumers use, `?requestType=WADO&studyUID=...&seriesUID=...
&objectUID=...`, answered at the DICOMweb root (where the OHIF configuration
`serve` writes points `wadoUriRoot`) and at `/wado` (Orthanc's and
dcm4chee's path).

Each request is rewritten into the WADO-RS or rendered request it stands
for before the guard sees it, so authentication, limits, ETags and the
audit trail (which records the instance retrieved or rendered) treat both
forms alike, and no second implementation of either exists:

- `contentType=application/dicom`: the instance, in `transferSyntax`, by
  default Explicit VR Little Endian (PS3.18 9.4.2.4), as WADO-RS converts
  it; `transferSyntax=*` or the stored syntax sends the stored object.
- `contentType=image/jpeg` or `image/png`: frame `frameNumber` (default 1)
  rendered, with `rows`/`columns` (fitted, never enlarged), `region`
  (fractions of the frame: xmin,ymin,xmax,ymax), `windowCenter` with
  `windowWidth`, and `imageQuality`.
- No `contentType`: image/jpeg for a single-frame image or when a frame is
  named, application/dicom for other objects (PS3.18 7.1.2, 7.2.2).

`anonymize`, `annotation` and presentation states are refused (400): an
archive that silently ignored `anonymize=yes` would leak what it was asked
to hide.
"""

from __future__ import annotations

import math
from urllib.parse import parse_qsl, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from transcode.server import params
from transcode.server.errors import Problem, error_response
from transcode.server.lookup import uid
from transcode.server.negotiate import EXPLICIT_LE
from transcode.server.service import Service

DICOM, RENDERED = "application/dicom", ("image/jpeg", "image/png")
_REFUSED = ("anonymize", "annotation", "presentationUID", "presentationSeriesUID")


class WadoUri:
    """ASGI middleware: WADO-URI requests at `prefix` or `/wado` become the
    WADO-RS or rendered requests they stand for (see the module's text);
    everything else passes through untouched."""

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.service = service
        self.paths = {service.prefix, service.prefix + "/", "/wado"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths or not scope.get("query_string"):
            await self.app(scope, receive, send)
            return
        query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        try:
            path, query_string, accept = await run_in_threadpool(rewrite, self.service, query)
        except Problem as problem:
            await error_response(problem.status, problem.reason, problem.detail, problem.headers)(scope, receive, send)
            return
        headers = [(name, value) for name, value in scope["headers"] if name != b"accept"]
        await self.app({**scope, "path": path, "raw_path": path.encode(), "query_string": query_string.encode(),
                        "headers": [*headers, (b"accept", accept.encode())]}, receive, send)


def rewrite(service: Service, query: list[tuple[str, str]]) -> tuple[str, str, str]:
    """The WADO-RS path, query string and Accept header that WADO-URI
    `query` stands for; Problem (400, 406) where the query is malformed.
    This runs before authentication, so nothing it answers depends on what
    the archive holds: an instance it cannot find is rewritten all the same,
    and the route answers 404 to whoever passes the guard."""
    given: dict[str, str] = {}
    for name, value in query:
        if name in given:
            raise Problem(400, "bad_wado_uri", f"{name} is given twice")
        given[name] = value
    if given.get("requestType") != "WADO":
        raise Problem(400, "bad_wado_uri", "a WADO-URI request has requestType=WADO")
    if refused := [name for name in _REFUSED if name in given]:
        raise Problem(400, "not_supported", f"{', '.join(refused)} not supported: the archive sends what it holds")
    for name in ("studyUID", "seriesUID", "objectUID"):
        if name not in given:
            raise Problem(400, "bad_wado_uri", f"{name} is required")
    study, series, sop = (uid(given[name], name) for name in ("studyUID", "seriesUID", "objectUID"))
    base = f"{service.prefix}/studies/{study}/series/{series}/instances/{sop}"
    syntax = given.get("transferSyntax") or EXPLICIT_LE
    instance = f"{DICOM}; transfer-syntax={syntax if syntax == '*' else uid(syntax, 'transferSyntax')}"
    wanted = _content_type(given.get("contentType"))
    frame = given.get("frameNumber")
    number = 1 if frame is None else params.whole(frame, "frameNumber", "bad_wado_uri", low=1)
    rendered = _rendering(given)
    region = _region(given.get("region"))
    columns, rows = (None if (value := given.get(name)) is None else params.whole(value, name, "bad_wado_uri", low=1)
                     for name in ("columns", "rows"))
    size = (columns, rows)
    try:
        row = service.catalog.instance(study, series, sop).row
        media_type = wanted or (DICOM if row.frames != 1 and frame is None else "image/jpeg")
        if media_type == DICOM:
            return base, "", instance
        if region is not None or size != (None, None):
            header = service.image_header(row)
            rendered["viewport"] = _viewport(int(header.Columns), int(header.Rows), region, size)
    except Problem:  # not found, or unreadable: the route says so, past the guard
        return base, "", instance
    return f"{base}/frames/{number}/rendered", urlencode(rendered), media_type


def _content_type(value: str | None) -> str | None:
    """The first media type of the `contentType` list that is served (None: not given)."""
    if value is None:
        return None
    for item in value.split(","):
        media_type = item.split(";")[0].strip().lower()
        if media_type == DICOM or media_type in RENDERED:
            return media_type
    raise Problem(406, "not_acceptable", f"contentType {value!r}: served are {DICOM}, {', '.join(RENDERED)}")


def _rendering(given: dict[str, str]) -> dict[str, str]:
    """The rendered route's `window` and `quality` for WADO-URI's parameters."""
    rendered = {}
    if (center := given.get("windowCenter")) is not None or "windowWidth" in given:
        if center is None or "windowWidth" not in given:
            raise Problem(400, "bad_wado_uri", "windowCenter and windowWidth come together")
        rendered["window"] = f"{center},{given['windowWidth']},linear"
    if "imageQuality" in given:
        rendered["quality"] = given["imageQuality"]
    return rendered


def _region(value: str | None) -> tuple[float, float, float, float] | None:
    """`region=xmin,ymin,xmax,ymax`, fractions of the frame."""
    if value is None:
        return None
    try:
        x0, y0, x1, y1 = (float(v) for v in value.split(","))
    except ValueError:
        raise Problem(400, "bad_wado_uri", "region is xmin,ymin,xmax,ymax, fractions of the frame") from None
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise Problem(400, "bad_wado_uri", "region: 0 <= xmin < xmax <= 1 and 0 <= ymin < ymax <= 1")
    return x0, y0, x1, y1


def _viewport(width: int, height: int, region: tuple[float, float, float, float] | None,
              size: tuple[int | None, int | None]) -> str:
    """The rendered `viewport` of a `width` x `height` frame for `region`
    and the `size` asked for, columns and rows (the region's own where not
    given)."""
    source = ""
    if region is not None:
        x0, y0, x1, y1 = region
        sx, sy = math.floor(x0 * width), math.floor(y0 * height)
        width, height = max(1, math.ceil(x1 * width) - sx), max(1, math.ceil(y1 * height) - sy)
        source = f",{sx},{sy},{width},{height}"
    columns, rows = size
    return f"{columns or width},{rows or height}{source}"
