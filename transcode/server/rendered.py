"""Rendered resources and thumbnails (PS3.18 10.4.1.1.3, 10.4.1.1.4).

`/rendered` of a frame renders that frame; of an instance, its first frame;
of a series, the first frame of its first instance. `/thumbnail` (default
viewport 128x128) of a series or study shows the middle instance of the
(first) series, the image a viewer's series list usually shows. Query
parameters: `window=center,width[,function]`,
`viewport=width,height[,sx,sy,sw,sh]` (a source region reads and decodes
only the tiles and resolution levels it needs), `quality` (JPEG, 1-100),
`accept` (image/jpeg or image/png).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from transcode.catalog.base import InstanceRow
from transcode.server import params, regions, render
from transcode.server.frames import StoredInstance
from transcode.server.negotiate import choose_image
from transcode.server.responses import cache_headers, etag, not_modified
from transcode.server.service import Service

THUMBNAIL = (128, 128)


def routes(service: Service, limits: render.RenderLimits | None = None) -> APIRouter:
    router = APIRouter()
    limits = limits or render.RenderLimits()
    catalog, reader = service.catalog, service.reader

    def image(request: Request, stored: StoredInstance, number: int, default: tuple[int, int] | None,
              immutable: bool) -> Response:
        reader.check(stored, [number])
        query = request.query_params
        media_type = choose_image(request.headers.get("accept"), query.get("accept"))
        window = render.parse_window(query.get("window"))
        viewport = render.parse_viewport(query.get("viewport")) or (render.Viewport(default) if default else None)
        quality = _quality(query.get("quality"))
        headers = cache_headers(etag("rendered", stored.row.object_digest, str(number), media_type, str(window),
                                     repr(viewport), str(quality)), immutable)
        if (cached := not_modified(request, headers)) is not None:
            return cached
        ds = service.image_header(stored.row)
        columns, rows = int(ds.Columns), int(ds.Rows)
        box = regions.Box(*viewport.box(columns, rows)) if viewport and viewport.source else None
        if box is not None:
            regions.check_box(box, columns, rows)
        shown = (box.width, box.height) if box else (columns, rows)
        size = render.capped(render.fit(*shown, viewport.size if viewport else None), limits.max_pixels)
        if stored.transcoded:
            level = render.level_for(stored.index(number), size, limits.max_pixels,
                                     (box.x, box.y, box.width, box.height) if box else None)
        else:
            render.check_decodable(columns, rows, limits)
            level = None
        frame = regions.pixels(reader, stored, number, box, level) if box else reader.pixels(stored, number, level)
        with reader.compute:
            body = render.encode_image(render.to_rgb_or_grey(frame, ds, window), size, media_type, quality)
        return Response(body, media_type=media_type, headers=headers)

    def first(rows: list[InstanceRow]) -> StoredInstance:
        row = rows[0]
        return catalog.instance(row.study_uid, row.series_uid, row.sop_uid)

    def middle(rows: list[InstanceRow]) -> StoredInstance:
        row = rows[len(rows) // 2]
        return catalog.instance(row.study_uid, row.series_uid, row.sop_uid)

    base = "/studies/{study}/series/{series}/instances/{sop}"

    @router.get(base + "/frames/{frame}/rendered")
    def frame_rendered(request: Request, study: str, series: str, sop: str, frame: int) -> Response:
        return image(request, catalog.instance(study, series, sop), frame, None, immutable=True)

    @router.get(base + "/rendered")
    def instance_rendered(request: Request, study: str, series: str, sop: str) -> Response:
        return image(request, catalog.instance(study, series, sop), 1, None, immutable=True)

    @router.get("/studies/{study}/series/{series}/rendered")
    def series_rendered(request: Request, study: str, series: str) -> Response:
        return image(request, first(catalog.instances(study, series)), 1, None, immutable=False)

    @router.get(base + "/frames/{frame}/thumbnail")
    def frame_thumbnail(request: Request, study: str, series: str, sop: str, frame: int) -> Response:
        return image(request, catalog.instance(study, series, sop), frame, THUMBNAIL, immutable=True)

    @router.get(base + "/thumbnail")
    def instance_thumbnail(request: Request, study: str, series: str, sop: str) -> Response:
        stored = catalog.instance(study, series, sop)
        return image(request, stored, (stored.count + 1) // 2 or 1, THUMBNAIL, immutable=True)

    @router.get("/studies/{study}/series/{series}/thumbnail")
    def series_thumbnail(request: Request, study: str, series: str) -> Response:
        return image(request, middle(catalog.instances(study, series)), 1, THUMBNAIL, immutable=False)

    @router.get("/studies/{study}/thumbnail")
    def study_thumbnail(request: Request, study: str) -> Response:
        rows = catalog.instances(study)
        first_series = [r for r in rows if r.series_uid == rows[0].series_uid]
        return image(request, middle(first_series), 1, THUMBNAIL, immutable=False)

    return router


class _FrameNumber(Convertor[int]):
    """A frame number in a plain route's path: at most 9 digits, so that a
    number too long for Python to parse is not matched (it falls through to
    the FastAPI route, which answers 400) instead of raising in the router."""

    regex = "[0-9]{1,9}"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(value)


register_url_convertor("frame_number", _FrameNumber())


def plain_routes(router: APIRouter, prefix: str) -> list[Route]:
    """`router`'s routes again as plain Starlette routes, for the app to put
    first (as it does the frames route): FastAPI's route matching and
    parameter machinery cost about as much CPU per request as encoding a
    512x512 JPEG (profiled in process). The same endpoints run on the
    thread pool; a path a plain route does not match (a frame number that
    is not digits) falls through to the FastAPI route, which answers 400."""

    def plain(route: APIRoute) -> Route:
        endpoint = route.endpoint

        async def call(request: Request) -> Response:
            return await run_in_threadpool(endpoint, request, **request.path_params)

        return Route(prefix + route.path.replace("{frame}", "{frame:frame_number}"), call, methods=["GET"])

    return [plain(route) for route in router.routes if isinstance(route, APIRoute)]


def _quality(value: str | None) -> int:
    if value is None:
        return 90
    return params.whole(value, "quality", "bad_quality", low=1, high=100)
