"""WADO-RS (PS3.18 10.4): instances, metadata, frames and bulk data.

Frames the client takes as HTJ2K (or `transfer-syntax=*`) are the stored
codestream bytes, sliced from the object at the offsets in the index;
`?level=N` (0 = lowest resolution, up to the frame's decomposition count =
full) sends only the prefix holding levels 0..N. Clients that accept only
uncompressed pixels get them decoded.

Everything sent is first checked against the digests recorded at ingest
(`integrity`). A streamed body produces its first piece before the response
starts, so that a damaged or missing first frame or object is an error
response; one found later aborts the transfer (the client sees it broken,
not complete), as nothing else can be said once the status line is out.
"""

from __future__ import annotations

import itertools
import json
import string
from collections.abc import Iterable, Iterator
from typing import TypeVar

import pydicom
from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from transcode.catalog.base import InstanceRow
from transcode.server import convert, multipart, params, regions
from transcode.server.errors import Problem
from transcode.server.frames import StoredInstance, little_endian
from transcode.server.negotiate import (
    EXPLICIT_LE,
    NotAcceptable,
    accepts_json,
    choose_frames,
    choose_instances,
    level_refusal,
)
from transcode.server.responses import cache_headers, etag, not_modified, ranged
from transcode.server.service import Service

PIXEL_DATA = "7FE00010"
T = TypeVar("T")


def parse_frames(value: str, max_frames: int) -> list[int]:
    """`1,2,5` -> [1, 2, 5]; 400 for anything else, for a frame named twice
    (a response is never larger than the frames it holds) and for more
    than `max_frames` frames."""
    items = value.split(",")
    if len(items) > max_frames:
        raise Problem(400, "too_many_frames", f"at most {max_frames} frames per request")
    numbers = [params.whole(item, "a frame", "bad_frame_list", low=1) for item in items]
    if len(set(numbers)) < len(numbers):
        raise Problem(400, "repeated_frames", "each frame is asked for once")
    return numbers


def parse_level(value: str | None) -> int | None:
    if value is None:
        return None
    return params.whole(value, "level", "no_such_level", high=32)


def send_frames(service: Service, request: Request, stored: StoredInstance, numbers: list[int],
                level: int | None) -> Response:
    """Frames `numbers` of `stored` in the representation the Accept header chooses."""
    reader = service.reader
    reader.check(stored, numbers)
    row = stored.row
    choice = choose_frames(request.headers.get("accept"), row.transfer_syntax, single=len(numbers) == 1)
    if level is not None and (refusal := level_refusal(choice, row.transfer_syntax,
                                                       has_levels=stored.transcoded)):
        raise Problem(400, "no_levels", refusal)
    key = ",".join(map(str, numbers))
    headers = cache_headers(etag("frames", *stored.content(numbers), key, choice.part_type, str(choice.multipart),
                                 str(level)), immutable=True)
    if (cached := not_modified(request, headers)) is not None:
        return cached

    def frame(number: int, head: bytes = b"", tail: bytes = b"") -> bytes | memoryview:
        if choice.decode:
            return convert.native_frame(service, stored, number, head=head, tail=tail)
        return reader.stored(stored, number, level, head=head, tail=tail)

    base = service.instance_url(request, row)
    boundary = multipart.boundary_for(headers["ETag"])
    media_type = multipart.content_type(choice.media_type, boundary)
    if len(numbers) == 1:  # small enough to hold; byte ranges need the whole body
        if not choice.multipart:
            return ranged(request, frame(numbers[0]), choice.part_type, headers)
        head = multipart.part_head(boundary, choice.part_type, f"{base}/frames/{numbers[0]}")
        return ranged(request, frame(numbers[0], head, multipart.closing(boundary)), media_type, headers)
    parts = ((choice.part_type, f"{base}/frames/{n}", (frame(n),)) for n in numbers)  # each read as its part starts
    return StreamingResponse(_started(multipart.body(parts, boundary)), media_type=media_type, headers=headers)


def send_region(service: Service, request: Request, stored: StoredInstance, number: int, box: regions.Box,
                level: int | None) -> Response:
    """The region `box` (full-resolution pixels) of frame `number` at
    `level`, with the Accept rules of frames: a cut-out HTJ2K codestream of
    the tiles covering it (its SIZ image offsets say where it lies on the
    frame's reference grid), or the decoded pixels covering it, native
    little-endian, rows x columns of that level."""
    service.reader.check(stored, [number])
    choice = choose_frames(request.headers.get("accept"), stored.row.transfer_syntax, single=True)
    headers = cache_headers(etag("region", *stored.content([number]), str(number), repr(box), str(level),
                                 choice.part_type, str(choice.multipart)), immutable=True)
    if (cached := not_modified(request, headers)) is not None:
        return cached
    if choice.decode:
        body: bytes = little_endian(regions.pixels(service.reader, stored, number, box, level))
    else:
        body = regions.cut_out(service.reader, stored, number, box, level)
    if not choice.multipart:
        return ranged(request, body, choice.part_type, headers)
    boundary = multipart.boundary_for(headers["ETag"])
    head = multipart.part_head(boundary, choice.part_type, str(request.url))
    return ranged(request, head + body + multipart.closing(boundary),
                  multipart.content_type(choice.media_type, boundary), headers)


def frames_route(service: Service, prefix: str) -> Route:
    """`.../instances/{sop}/frames/{list}`, the hot path of a viewer, as a
    plain Starlette route placed before all others: FastAPI's parameter
    machinery and a walk past every other route cost more than the frame.

    One frame as stored from a local archive is an index lookup and one
    read from the page cache, done on the event loop (a hop to the thread
    pool costs more too), and so is one in the read cache of a remote
    archive. Decoding, streams of many frames and every read from a remote
    archive (a round trip to S3 would stall every other request on the
    loop) go to the thread pool. (A frame evicted from the cache between
    the look and the read is read on the loop: a rare stall, not an error.)"""

    remote = service.archive.remote

    async def endpoint(request: Request) -> Response:
        p = request.path_params
        stored = service.catalog.instance(p["study"], p["series"], p["sop"])
        numbers, level = parse_frames(p["frames"], service.max_frames), parse_level(request.query_params.get("level"))
        if len(numbers) == 1 and stored.transcoded and not _wants_decoded(request, stored) and (
                not remote or service.reader.cached(stored, numbers[0], level)):
            return send_frames(service, request, stored, numbers, level)
        return await run_in_threadpool(send_frames, service, request, stored, numbers, level)

    return Route(prefix + "/studies/{study}/series/{series}/instances/{sop}/frames/{frames}", endpoint,
                 methods=["GET"])


def routes(service: Service) -> APIRouter:
    router = APIRouter()
    catalog = service.catalog

    def retrieve(request: Request, rows: list[InstanceRow], immutable: bool) -> Response:
        choice = choose_instances(request.headers.get("accept"), {r.transfer_syntax for r in rows},
                                  single=len(rows) == 1, convertible=all(convert.possible(r) for r in rows))
        headers = cache_headers(etag("instances", str(choice), *(r.object_digest for r in rows)), immutable)
        if (cached := not_modified(request, headers)) is not None:
            return cached

        def read(row: InstanceRow) -> Iterable[bytes]:
            if choice.convert:  # the header comes from the object: proved whole first
                service.reader.objects.check_object(row)
                return convert.explicit_le(service.reader, catalog.instance(row.study_uid, row.series_uid, row.sop_uid))
            return service.reader.objects.stream(row)

        if not choice.multipart:
            row = rows[0]
            if not choice.convert:
                headers["Content-Length"] = str(row.size)
            return StreamingResponse(_started(read(row)), media_type="application/dicom", headers=headers)
        boundary = multipart.boundary_for(headers["ETag"])
        pieces = [read(r) for r in rows]
        pieces[0] = _started(pieces[0])
        parts = [(f"application/dicom; transfer-syntax={EXPLICIT_LE if choice.convert else r.transfer_syntax}",
                  service.instance_url(request, r), p) for r, p in zip(rows, pieces, strict=True)]
        return StreamingResponse(multipart.body(parts, boundary),
                                 media_type=multipart.content_type("application/dicom", boundary), headers=headers)

    @router.get("/studies/{study}")
    def study(request: Request, study: str) -> Response:
        return retrieve(request, catalog.instances(study), immutable=False)

    @router.get("/studies/{study}/series/{series}")
    def series(request: Request, study: str, series: str) -> Response:
        return retrieve(request, catalog.instances(study, series), immutable=False)

    @router.get("/studies/{study}/series/{series}/instances/{sop}")
    def instance(request: Request, study: str, series: str, sop: str) -> Response:
        return retrieve(request, [catalog.instance(study, series, sop).row], immutable=True)

    def metadata(request: Request, rows: list[InstanceRow], immutable: bool) -> Response:
        if not accepts_json(request.headers.get("accept")):
            raise Problem(406, "not_acceptable", "metadata is application/dicom+json")
        headers = cache_headers(etag("metadata", *(r.object_digest for r in rows)), immutable)
        if (cached := not_modified(request, headers)) is not None:
            return cached
        return Response("[" + ",".join(_instance_json(service.instance_url(request, r), r) for r in rows) + "]",
                        media_type="application/dicom+json", headers=headers)

    @router.get("/studies/{study}/metadata")
    def study_metadata(request: Request, study: str) -> Response:
        return metadata(request, catalog.instances(study), immutable=False)

    @router.get("/studies/{study}/series/{series}/metadata")
    def series_metadata(request: Request, study: str, series: str) -> Response:
        return metadata(request, catalog.instances(study, series), immutable=False)

    @router.get("/studies/{study}/series/{series}/instances/{sop}/metadata")
    def instance_metadata(request: Request, study: str, series: str, sop: str) -> Response:
        return metadata(request, [catalog.row(study, series, sop)], immutable=True)

    @router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame}/region")
    def region(request: Request, study: str, series: str, sop: str, frame: int, x: int, y: int, w: int, h: int,
               level: str | None = None) -> Response:
        return send_region(service, request, catalog.instance(study, series, sop), frame, regions.Box(x, y, w, h),
                           parse_level(level))

    @router.get("/studies/{study}/series/{series}/instances/{sop}/bulkdata/{tag}")
    def bulkdata(request: Request, study: str, series: str, sop: str, tag: str) -> Response:
        stored = catalog.instance(study, series, sop)
        if tag.upper() == PIXEL_DATA:
            return send_frames(service, request, stored, list(range(1, stored.count + 1)), None)
        value = _bulk_value(service, stored.row, tag)
        headers = cache_headers(etag("bulkdata", stored.row.object_digest, tag.upper()), immutable=True)
        if (cached := not_modified(request, headers)) is not None:
            return cached
        boundary = multipart.boundary_for(headers["ETag"])
        parts = [("application/octet-stream", str(request.url), (value,))]
        return Response(b"".join(multipart.body(parts, boundary)),
                        media_type=multipart.content_type("application/octet-stream", boundary), headers=headers)

    return router


def _started(pieces: Iterable[T]) -> Iterator[T]:
    """`pieces` with the first one already produced, so that what fails
    before the first byte (a missing object, a damaged first frame) is
    answered as an error rather than breaking a response already begun."""
    rest = iter(pieces)
    for first in rest:
        return itertools.chain((first,), rest)
    return rest


def _wants_decoded(request: Request, stored: StoredInstance) -> bool:
    try:
        return choose_frames(request.headers.get("accept"), stored.row.transfer_syntax, single=True).decode
    except NotAcceptable:
        return False  # answered where it is chosen again


def _instance_json(url: str, row: InstanceRow) -> str:
    """The stored DICOM JSON with absolute BulkDataURIs, a Pixel Data
    BulkDataURI and the Available Transfer Syntax UID (what frames are sent
    in without decoding). Spliced as text: no parse of every instance."""
    text = row.dicom_json.replace('"BulkDataURI":"bulkdata/', f'"BulkDataURI":"{url}/bulkdata/')
    extra = {"00083002": {"vr": "UI", "Value": [row.transfer_syntax]}}
    if '"00280010"' in text:  # Rows: an image
        extra[PIXEL_DATA] = {"vr": "OB", "BulkDataURI": f"{url}/bulkdata/{PIXEL_DATA}"}
    addition = json.dumps(extra, separators=(",", ":"))[1:-1]
    return text[:-1] + ("," if len(text) > 2 else "") + addition + "}"


def _bulk_value(service: Service, row: InstanceRow, tag: str) -> bytes:
    """The raw value of the first element `tag` in the stored object, at the
    top level or, failing that, inside a sequence (depth first)."""
    if len(tag) != 8 or not all(c in string.hexdigits for c in tag):  # int(_, 16) takes "0x", "_", any length
        raise Problem(400, "bad_tag", "a tag is 8 hexadecimal digits (group and element)")
    wanted = int(tag, 16)
    service.reader.objects.check_object(row)
    ds = service.header(row)

    def find(dataset: pydicom.Dataset) -> bytes | None:
        if wanted in dataset:
            element = dataset.get_item(wanted)
            value = element.value
            return value if isinstance(value, bytes) else str(value).encode()
        for element in dataset:
            if element.VR == "SQ":
                for item in element.value:
                    if (found := find(item)) is not None:
                        return found
        return None

    value = find(ds)
    if value is None:
        raise Problem(404, "not_found", f"instance {row.sop_uid} has no element {tag}")
    return value
