"""The zarr view over HTTP, read-only: the keys of `transcode.zarr`'s store
under `/zarr/studies/{study}/series/{series}/` (a series) and
`.../instances/{sop}/` (one multi-frame instance), so that zarr-python
(`zarr.open_group(url, mode="r")`, fsspec's HTTP file system) and OME-Zarr
readers open a URL. A key the view does not hold is 404, which zarr reads
as a missing chunk or node.

A series' view (its slice order and geometry) is built from the index once
and kept while the series' instances stay the same: each request checks a
signature of the series (instance count and last row), so a new arrival
rebuilds it. Answers are `private, no-cache`: a series can grow.
"""

from __future__ import annotations

import functools
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from transcode.server.errors import Problem
from transcode.server.lookup import uid
from transcode.server.responses import REVALIDATE
from transcode.server.service import Service

PREFIX = "/zarr"


def routes(service: Service) -> list[Route]:
    """The two read-only routes, to be mounted at the application root."""
    # imported here: transcode.zarr imports this package (its catalog and frame reader)
    from transcode.zarr.layout import instance_volume, series_volume
    from transcode.zarr.store import ViewStore

    catalog, reader = service.catalog, service.reader

    @functools.lru_cache(maxsize=64)
    def series_store(study: str, series: str, _signature: tuple[Any, ...]) -> ViewStore:
        return ViewStore(catalog, reader, series_volume(catalog, study, series))

    @functools.lru_cache(maxsize=256)
    def instance_store(study: str, series: str, sop: str) -> ViewStore:  # archived instances never change
        return ViewStore(catalog, reader, instance_volume(catalog, study, series, sop))

    def answer(store: ViewStore, key: str) -> Response:
        data = store.value(key)
        if data is None:
            raise Problem(404, "not_found", f"the zarr view has no key {key!r}")
        media_type = "application/json" if key.endswith("zarr.json") else "application/octet-stream"
        return Response(data, media_type=media_type, headers={"Cache-Control": REVALIDATE})

    def series_key(request: Request) -> Response:
        p = request.path_params
        study, series = uid(p["study"], "Study Instance UID"), uid(p["series"], "Series Instance UID")
        return answer(series_store(study, series, service.archive.index.signature(study, series)), p["key"])

    def instance_key(request: Request) -> Response:
        p = request.path_params
        store = instance_store(uid(p["study"], "Study Instance UID"), uid(p["series"], "Series Instance UID"),
                               uid(p["sop"], "SOP Instance UID"))
        return answer(store, p["key"])

    async def on_thread(request: Request) -> Response:  # decoding and SQL off the event loop
        handler = instance_key if "sop" in request.path_params else series_key
        return await run_in_threadpool(handler, request)

    base = PREFIX + "/studies/{study}/series/{series}"
    return [Route(base + "/instances/{sop}/{key:path}", on_thread, methods=["GET"]),
            Route(base + "/{key:path}", on_thread, methods=["GET"])]
