"""The DICOMweb application: `create_app(archive)`.

Routes live under `prefix` (default `/dicomweb`): QIDO-RS search, WADO-RS
retrieval (instances, metadata, frames, frame regions, bulk data, rendered,
thumbnails) and STOW-RS; the IIIF Image API under `/iiif` and the read-only
zarr view of series and instances under `/zarr` (`zarrview`). The built-in
viewer is at `/`, a prebuilt OHIF (optional) under `/ohif/`. Errors are
JSON, `{"error": reason, "detail": sentence}`.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from transcode import __version__, logs
from transcode.archive.objects import address_of, open_archive
from transcode.archive.store import Archive
from transcode.catalog import search
from transcode.catalog.base import CatalogError
from transcode.codecs.htj2k import EncodeSettings
from transcode.limits import Limits
from transcode.policy import Stop
from transcode.security.guard import Guard, Security, security_from
from transcode.server import cache, iiif, iiif_manifest, qido, rendered, stow, viewer, wado, zarrview
from transcode.server.admission import LimitsMiddleware
from transcode.server.errors import Problem, error_response
from transcode.server.lookup import uid
from transcode.server.negotiate import NotAcceptable, accepts_json
from transcode.server.qido import QueryError
from transcode.server.render import RenderLimits
from transcode.server.service import Service
from transcode.server.wado_uri import WadoUri
from transcode.service import IngestService

SERVE_OPTIONS = "TRANSCODE_SERVE_OPTIONS"
log = logging.getLogger(__name__)
#: How long a browser may reuse a CORS preflight answer (Chromium caps it at 2 hours).
PREFLIGHT_MAX_AGE = 7200
EXPOSED = ["Content-Range", "Content-Length", "Content-Type", "Content-Location", "ETag", "Warning"]
STUDY, SERIES = search.STUDY_UID, search.SERIES_UID


def create_app(archive: Archive, *, prefix: str = "/dicomweb", cors_origins: Sequence[str] = (),
               stow_workers: int | None = None, on_conflict: str = "keep", settings: EncodeSettings | None = None,
               render_limits: RenderLimits | None = None, security: Security | None = None,
               limits: Limits | None = None, viewer_dir: Path | None = None,
               read_cache_mb: int | None = None) -> FastAPI:
    """The application over `archive` (opened by the caller, who closes it).
    `cors_origins`: origins allowed to call from a browser ("*" for any);
    `on_conflict`: what STOW-RS does with other content under an archived
    SOP Instance UID (`policy.OnConflict`); `settings`: how STOW-RS
    transcodes (the frame size cap among them); `render_limits`: the
    largest rendered image; `security`: authentication, the audit trail
    (closed with the app) and the template-only access log (`guard`); none
    by default, as for an app embedded behind its own gate; `limits`: what
    a request may be (`transcode.limits`); `viewer_dir`: a prebuilt static
    viewer (OHIF's dist) to serve under `/ohif/`, configured for this server;
    `read_cache_mb`: how many MB of frames read from an object store this
    process keeps for the next requests (`server.cache`; default
    `cache.DEFAULT_MB`, 0: none; a folder archive has the page cache instead)."""
    limits = limits or Limits()
    megabytes = cache.DEFAULT_MB if read_cache_mb is None else read_cache_mb
    read_cache = cache.ReadCache(megabytes << 20) if archive.remote and megabytes > 0 else None
    service = Service(archive, prefix, max_frames=limits.max_frames, read_cache=read_cache)
    ingester = IngestService(address_of(archive), workers=stow_workers or 2, settings=settings,  # started by the
                             on_conflict=on_conflict)  # first STOW, in sessions of its own over the same archive

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        ingester.close()
        if security is not None and security.audit is not None:
            security.audit.close()

    app = FastAPI(title="transcode DICOMweb", version=__version__, docs_url=f"{prefix}/docs",
                  openapi_url=f"{prefix}/openapi.json", lifespan=lifespan)
    app.router.routes.insert(0, wado.frames_route(service, prefix))  # first: the hot path
    rendered_routes = rendered.routes(service, render_limits)
    routers = [(prefix, wado.routes(service)), (prefix, _qido_routes(service)), (prefix, rendered_routes),
               ("", iiif.routes(service, render_limits)), ("", iiif_manifest.routes(service)),  # IIIF: /iiif/...
               (prefix, stow.routes(service, ingester, limits.max_upload_parts))]
    for where, router in routers:
        app.include_router(router, prefix=where)
    app.router.routes[1:1] = rendered.plain_routes(rendered_routes, prefix)  # after the frames route
    app.router.routes.extend(zarrview.routes(service))  # at the root: /zarr/...
    viewer.mount(app, prefix, viewer_dir)
    # Middleware added last runs first: CORS, then the limits (before any route, the frames route too, and
    # before authentication: a hostile request costs nothing more), then WADO-URI rewritten into WADO-RS (so
    # the guard and the trail see the instance asked for), then the security guard, then HEAD as GET.
    app.add_middleware(HeadAsGet)
    if security is not None:  # every route template (the app's own, then its routers'), for the log and the trail
        templates = [path for route in app.router.routes if (path := getattr(route, "path", None))]
        templates += [where + route.path for where, router in routers for route in router.routes]
        app.add_middleware(Guard, security=security, templates=templates)
    app.add_middleware(WadoUri, service=service)
    app.add_middleware(LimitsMiddleware, limits=limits)
    if cors_origins:  # outermost, so a browser can read a refusal; preflights carry no credentials
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["*"], expose_headers=EXPOSED, allow_credentials="*" not in cors_origins,
                           max_age=PREFLIGHT_MAX_AGE)
    _error_handlers(app)
    return app


class HeadAsGet:
    """HEAD answered as GET without its body (RFC 9110 9.3.2: every GET
    resource takes HEAD), for the routes that declare only GET. Innermost:
    the guard and the audit trail see the HEAD (a read), the route a GET.
    The body is still produced, then dropped: HEAD is rare here."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


def app_from_environment() -> FastAPI:
    """The app of one `transcode serve` worker process, from the options the
    command left in the environment (uvicorn starts workers by import path)."""
    logs.inherit()
    options = json.loads(os.environ[SERVE_OPTIONS])
    settings = EncodeSettings(max_frame_bytes=options["max_frame_bytes"]) if options.get("max_frame_bytes") else None
    render_limits = RenderLimits(options["max_render_pixels"]) if options.get("max_render_pixels") else None
    archive = open_archive(options["archive"], catalog=options.get("catalog"), work_dir=options.get("work_dir"),
                           read_only=options["read_only"])
    security = security_from(options.get("security", {}), options.get("catalog") or options["archive"])
    return create_app(archive, cors_origins=options["cors_origins"], stow_workers=options["stow_workers"],
                      on_conflict=options.get("on_conflict", "keep"), settings=settings,
                      render_limits=render_limits, security=security,
                      limits=Limits.from_json(options.get("limits", {})),
                      viewer_dir=Path(options["viewer_dir"]) if options.get("viewer_dir") else None,
                      read_cache_mb=options.get("read_cache_mb"))


def _qido_routes(service: Service) -> APIRouter:
    router = APIRouter()

    def search(request: Request, level: str, scope: dict[str, str]) -> Response:
        if not accepts_json(request.headers.get("accept")):
            raise Problem(406, "not_acceptable", "search results are application/dicom+json")

        def retrieve_url(study: str, series: str | None, sop: str | None) -> str:
            return service.url(request, study, series, sop)

        results, more = qido.search(service.archive.index, level, list(request.query_params.multi_items()), scope,
                                    retrieve_url)
        headers = {"Warning": '299 transcode "There are additional results that can be requested"'} if more else {}
        return Response(json.dumps(results), media_type="application/dicom+json", headers=headers)

    @router.get("/studies")
    def studies(request: Request) -> Response:
        return search(request, "study", {})

    @router.get("/series")
    def all_series(request: Request) -> Response:
        return search(request, "series", {})

    @router.get("/instances")
    def all_instances(request: Request) -> Response:
        return search(request, "instance", {})

    @router.get("/studies/{study}/series")
    def study_series(request: Request, study: str) -> Response:
        return search(request, "series", {STUDY: uid(study, "Study Instance UID")})

    @router.get("/studies/{study}/instances")
    def study_instances(request: Request, study: str) -> Response:
        return search(request, "instance", {STUDY: uid(study, "Study Instance UID")})

    @router.get("/studies/{study}/series/{series}/instances")
    def series_instances(request: Request, study: str, series: str) -> Response:
        return search(request, "instance",
                      {STUDY: uid(study, "Study Instance UID"), SERIES: uid(series, "Series Instance UID")})

    return router


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def problem(_: Request, exc: Problem) -> JSONResponse:
        return error_response(exc.status, exc.reason, exc.detail, exc.headers)

    @app.exception_handler(NotAcceptable)
    async def not_acceptable(_: Request, exc: NotAcceptable) -> JSONResponse:
        return error_response(406, "not_acceptable", str(exc))

    @app.exception_handler(QueryError)
    async def bad_query(_: Request, exc: QueryError) -> JSONResponse:
        return error_response(400, "bad_query", str(exc))

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return error_response(400, "bad_request", where)

    @app.exception_handler(Stop)
    async def unreadable(request: Request, exc: Stop) -> JSONResponse:
        log.error("%s %s: the stored object cannot be read: %s: %s", request.method, request.url.path,
                  exc.reason.value, exc.detail)  # the detail may name a path: the log's, not the client's
        return error_response(500, exc.reason.value, "the stored object cannot be read (the server log says why)")

    @app.exception_handler(CatalogError)
    async def catalog_down(request: Request, exc: CatalogError) -> JSONResponse:
        log.error("%s %s: %s", request.method, request.url.path, exc)
        return error_response(503, "catalog_unavailable", "the archive's catalog cannot be reached; try again later",
                              {"Retry-After": "30"})

    @app.exception_handler(sqlite3.DatabaseError)
    async def damaged_index(request: Request, exc: sqlite3.DatabaseError) -> JSONResponse:
        log.error("%s %s: the index cannot be read: %s", request.method, request.url.path, exc)
        return error_response(503, "index_unreadable", "the archive's index cannot be read; its administrator can "
                              "rebuild it from the stored objects (transcode verify --rebuild-index)")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, "internal_error", "the request failed (the server log has the details)")

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, reason, str(exc.detail), exc.headers)
