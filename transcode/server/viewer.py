"""The browser viewers served beside DICOMweb.

`/` is the built-in viewer (sources in `viewer/` at the repository root,
built into `viewer_dist/` and shipped as package data, so serving it needs no
node): its page at `/`, its scripts, styles and WebAssembly under `/viewer/`.

`/ohif/` is an optional prebuilt static viewer from a folder (OHIF's
`@ohif/app` dist): served from the same origin as `/dicomweb`, so the
browser makes no CORS preflight per frame. Its `app-config.js` is generated
to point at this server. OHIF's build has its public path (`/`) compiled in;
the few places that say so (`index.html`, the webpack runtime) are rewritten
to `/ohif/` as they are sent.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

log = logging.getLogger(__name__)
DIST = Path(str(files("transcode.server") / "viewer_dist"))
OHIF = "/ohif"
#: The page and the bundle change with the package: revalidate them (ETag).
NO_CACHE = {"Cache-Control": "no-cache"}
#: Root-relative URLs in a static viewer's HTML, and webpack's compiled public path.
_ROOT_URL = re.compile(rb'((?:src|href)=")/(?!/)')
_PUBLIC_PATH = (rb'window.PUBLIC_URL="/"', rb'__webpack_require__.p = "/"', rb'.p="/"')


def mount(app: Starlette, prefix: str, viewer_dir: Path | None = None) -> None:
    """Add the built-in viewer at `/` (and `/viewer/`) to `app`, and the
    static viewer in `viewer_dir` under `/ohif/` when given, configured for
    the DICOMweb routes under `prefix`."""
    index = DIST / "index.html"

    async def page(_: Request) -> Response:
        if not index.is_file():
            raise HTTPException(404, "the viewer is not built into this installation (viewer/build.mjs)")
        return FileResponse(index, headers=NO_CACHE)

    app.router.routes.append(Route("/", page, methods=["GET"]))
    # Compressed on the way (4.7 MB of script is 1.2 MB gzipped); only here, never the frames.
    app.router.routes.append(Mount("/viewer", GZipMiddleware(_Static(directory=DIST, check_dir=False)), name="viewer"))
    if viewer_dir is not None:
        app.router.routes.append(Route(f"{OHIF}/app-config.js", _ohif_config(prefix), methods=["GET"]))
        app.router.routes.append(Mount(OHIF, _SinglePage(directory=viewer_dir), name="ohif"))
        log.info("serving the static viewer in %s under %s/", viewer_dir, OHIF)


def ohif_config(root: str) -> str:
    """OHIF's `app-config.js` for one DICOMweb data source at `root` (this
    server's origin and prefix): frames as stored (HTJ2K, decoded and shown
    progressively in the browser), thumbnails from our `/thumbnail`."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "transcode",
        "configuration": {
            "friendlyName": "transcode archive", "name": "transcode",
            "qidoRoot": root, "wadoRoot": root, "wadoUriRoot": root,
            "qidoSupportsIncludeField": True, "supportsFuzzyMatching": False, "supportsWildcard": True,
            "imageRendering": "wadors", "thumbnailRendering": "thumbnail",
            "bulkDataURI": {"enabled": True}, "enableStudyLazyLoad": True,
            "omitQuotationForMultipartRequest": True,
            "acceptHeader": ["multipart/related; type=application/octet-stream; transfer-syntax=*"],
        },
    }
    config = {"routerBasename": f"{OHIF}/", "showStudyList": True, "dataSources": [source],
              "defaultDataSourceName": "transcode", "extensions": [], "modes": [],
              "investigationalUseDialog": {"option": "never"}, "showWarningMessageForCrossOrigin": False}
    return f"window.config = {json.dumps(config, indent=2)};\n"


def _ohif_config(prefix: str) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint of `/ohif/app-config.js`: the roots are where the browser reached us."""

    async def endpoint(request: Request) -> Response:
        root = f"{str(request.base_url).rstrip('/')}{prefix}"
        return Response(ohif_config(root), media_type="text/javascript", headers=NO_CACHE)

    return endpoint


class _Static(StaticFiles):
    """Static files revalidated on every use (ETag), as they change with the package."""

    def file_response(self, *args, **kwargs) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(NO_CACHE)
        return response


class _SinglePage(_Static):
    """A single-page application under `/ohif/`: paths that are no file are
    its own routes (`/ohif/viewer?...`) and get `index.html`; its compiled
    root-relative URLs are moved under `/ohif/`."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            response = await super().get_response(path, scope)
        except HTTPException as exc:
            if exc.status_code != 404:
                raise
            path = "index.html"  # one of the application's own routes (or a path outside the folder)
            response = await super().get_response(path, scope)
        if not path.endswith((".html", ".js")):
            return response
        file = Path(str(self.directory)) / path
        stat = file.stat()
        body = _moved(file, stat.st_mtime_ns, stat.st_size)
        if body is None:
            return response
        return Response(body, media_type="text/html" if file.suffix == ".html" else "text/javascript",
                        headers=NO_CACHE)


@lru_cache(maxsize=64)
def _moved(file: Path, mtime_ns: int, size: int) -> bytes | None:
    """`file` (HTML or a webpack bundle) with its compiled public path `/`
    moved to `/ohif/`; None when it names none. Cached per file version."""
    del mtime_ns, size  # the cache key: a changed file is read again
    body = original = file.read_bytes()
    for old in _PUBLIC_PATH:
        body = body.replace(old, old[:-2] + f'{OHIF}/"'.encode())
    if file.suffix == ".html":
        body = _ROOT_URL.sub(rb"\1" + OHIF.encode() + b"/", body)
    return None if body == original else body
