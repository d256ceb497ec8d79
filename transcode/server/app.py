"""The DICOMweb application: `create_app(archive)`.

Routes live under `prefix` (default `/dicomweb`): QIDO-RS search, WADO-RS
retrieval (instances, metadata, frames, frame regions, bulk data, rendered,
thumbnails) and STOW-RS; the IIIF Image API under `/iiif`. Errors are JSON, `{"error": reason, "detail": sentence}`.
The built-in viewer is at `/`, a prebuilt OHIF (optional) under `/ohif/`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from transcode import __version__, logs
from transcode.archive import FolderArchive
from transcode.archive.store import Archive
from transcode.codecs.htj2k import EncodeSettings
from transcode.policy import Stop
from transcode.server import iiif, qido, rendered, stow, viewer, wado
from transcode.server.catalog import uid
from transcode.server.errors import Problem
from transcode.server.negotiate import NotAcceptable, accepts_json
from transcode.server.qido import QueryError
from transcode.server.render import RenderLimits
from transcode.server.service import Service
from transcode.service import IngestService

SERVE_OPTIONS = "TRANSCODE_SERVE_OPTIONS"
log = logging.getLogger(__name__)
#: How long a browser may reuse a CORS preflight answer (Chromium caps it at 2 hours).
PREFLIGHT_MAX_AGE = 7200
EXPOSED = ["Content-Range", "Content-Length", "Content-Type", "Content-Location", "ETag", "Warning"]
STUDY, SERIES = qido.STUDY_UID, qido.SERIES_UID


def create_app(archive: Archive, *, prefix: str = "/dicomweb", cors_origins: Sequence[str] = (),
               stow_workers: int | None = None, on_conflict: str = "keep", settings: EncodeSettings | None = None,
               render_limits: RenderLimits | None = None, viewer_dir: Path | None = None) -> FastAPI:
    """The application over `archive` (opened by the caller, who closes it).
    `cors_origins`: origins allowed to call from a browser ("*" for any);
    `on_conflict`: what STOW-RS does with other content under an archived
    SOP Instance UID (`policy.OnConflict`); `settings`: how STOW-RS
    transcodes (the frame size cap among them); `render_limits`: the
    largest rendered image; `viewer_dir`: a prebuilt static viewer (OHIF's
    dist) to serve under `/ohif/`, configured for this server."""
    service = Service(archive, prefix)
    ingester = IngestService(archive.root, workers=stow_workers or 2, settings=settings,  # started by the first STOW
                             on_conflict=on_conflict) if archive.root is not None else None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if ingester is not None:
            ingester.close()

    app = FastAPI(title="transcode DICOMweb", version=__version__, docs_url=f"{prefix}/docs",
                  openapi_url=f"{prefix}/openapi.json", lifespan=lifespan)
    app.router.routes.insert(0, wado.frames_route(service, prefix))  # first: the hot path
    app.include_router(wado.routes(service), prefix=prefix)
    app.include_router(_qido_routes(service), prefix=prefix)
    app.include_router(rendered.routes(service, render_limits), prefix=prefix)
    app.include_router(iiif.routes(service, render_limits))  # at the root: /iiif/...
    if ingester is not None:
        app.include_router(stow.routes(service, ingester), prefix=prefix)
    viewer.mount(app, prefix, viewer_dir)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["*"], expose_headers=EXPOSED, max_age=PREFLIGHT_MAX_AGE)
    _error_handlers(app)
    return app


def app_from_environment() -> FastAPI:
    """The app of one `transcode serve` worker process, from the options the
    command left in the environment (uvicorn starts workers by import path)."""
    logs.inherit()
    options = json.loads(os.environ[SERVE_OPTIONS])
    settings = EncodeSettings(max_frame_bytes=options["max_frame_bytes"]) if options.get("max_frame_bytes") else None
    limits = RenderLimits(options["max_render_pixels"]) if options.get("max_render_pixels") else None
    return create_app(FolderArchive(options["archive"], read_only=options["read_only"]),
                      cors_origins=options["cors_origins"], stow_workers=options["stow_workers"],
                      on_conflict=options.get("on_conflict", "keep"), settings=settings, render_limits=limits,
                      viewer_dir=Path(options["viewer_dir"]) if options.get("viewer_dir") else None)


def _qido_routes(service: Service) -> APIRouter:
    router = APIRouter()

    def search(request: Request, level: str, scope: dict[str, str]) -> Response:
        if not accepts_json(request.headers.get("accept")):
            raise Problem(406, "not_acceptable", "search results are application/dicom+json")

        def retrieve_url(study: str, series: str | None, sop: str | None) -> str:
            return service.url(request, study, series, sop)

        results, more = qido.search(service.catalog.db, level, list(request.query_params.multi_items()), scope,
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


def _error(status: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": reason, "detail": detail}, status_code=status, headers=headers)


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def problem(_: Request, exc: Problem) -> JSONResponse:
        return _error(exc.status, exc.reason, exc.detail, exc.headers)

    @app.exception_handler(NotAcceptable)
    async def not_acceptable(_: Request, exc: NotAcceptable) -> JSONResponse:
        return _error(406, "not_acceptable", str(exc))

    @app.exception_handler(QueryError)
    async def bad_query(_: Request, exc: QueryError) -> JSONResponse:
        return _error(400, "bad_query", str(exc))

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _error(400, "bad_request", where)

    @app.exception_handler(Stop)
    async def unreadable(_: Request, exc: Stop) -> JSONResponse:
        return _error(500, exc.reason.value, f"the stored object cannot be read: {exc.detail}")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return _error(500, "internal_error", f"{type(exc).__name__} (the server log has the details)")

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, reason, str(exc.detail), exc.headers)
