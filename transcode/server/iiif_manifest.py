"""IIIF Presentation API 3.0 manifests: a series as a sequence of canvases.

Mirador (and other IIIF viewers) open a manifest, not an image service:
`/iiif/studies/{study}/series/{series}/manifest.json` lists every frame of
every instance of the series with pixels, in the order a viewer shows them
(Instance Number, then arrival), each a Canvas of the frame's size painted
by one Image whose `service` is the frame's IIIF image service (iiif.py).
A viewer then reads `info.json` and the tiles from that service, as it
would from any IIIF image server. Instances without pixel data (structured
reports, presentation states) have no canvas.

The manifest changes when instances arrive, so it is revalidated (an ETag
over the series' instances), not cached for good.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from transcode.catalog.base import InstanceRow
from transcode.dicom.metadata import DicomJson
from transcode.server.iiif import BASE, PROFILE
from transcode.server.responses import cache_headers, etag, not_modified
from transcode.server.service import Service

CONTEXT = "http://iiif.io/api/presentation/3/context.json"
MANIFEST = "/iiif/studies/{study}/series/{series}/manifest.json"


def routes(service: Service) -> APIRouter:
    """The manifest route, to be mounted at the application's root."""
    router = APIRouter()

    @router.get(MANIFEST)
    def manifest(request: Request, study: str, series: str) -> Response:
        rows = service.catalog.instances(study, series)
        headers = cache_headers(etag("iiif-manifest", *(f"{row.sop_uid}:{row.object_digest}" for row in rows),
                                     str(request.base_url)), immutable=False)
        if (cached := not_modified(request, headers)) is not None:
            return cached
        root = str(request.base_url).rstrip("/")
        body = _manifest(str(request.url.replace(query="")), root, study, series, rows)
        json_ld = "application/ld+json" in (request.headers.get("accept") or "")
        return JSONResponse(body, headers=headers, media_type=f'application/ld+json;profile="{CONTEXT}"' if json_ld
                            else "application/json")

    return router


def _manifest(url: str, root: str, study: str, series: str, rows: list[InstanceRow]) -> dict[str, Any]:
    first = _attributes(rows[0]).first
    label = first("0008103E") or " ".join(str(part) for part in (first("00080060"), "series", first("00200011"))
                                          if part not in (None, ""))
    return {
        "@context": CONTEXT,
        "id": url,
        "type": "Manifest",
        "label": {"none": [label or series]},
        "summary": {"none": [f"Study {study}, series {series}"]},
        "items": list(_canvases(url.removesuffix("/manifest.json"), root, study, series, rows)),
    }


def _canvases(series_url: str, root: str, study: str, series: str, rows: list[InstanceRow]) -> Iterator[dict]:
    for row in rows:
        first = _attributes(row).first
        width, height = first("00280011"), first("00280010")
        if not (row.frames and width and height):
            continue  # no pixels to show
        number = first("00200013")
        for frame in range(1, row.frames + 1):
            canvas = f"{series_url}/instances/{row.sop_uid}/frames/{frame}/canvas"
            image = root + BASE.format(study=study, series=series, sop=row.sop_uid, frame=frame)
            yield {
                "id": canvas,
                "type": "Canvas",
                "label": {"none": [f"instance {number or row.sop_uid}" + (f", frame {frame}" if row.frames > 1
                                                                          else "")]},
                "width": width,
                "height": height,
                "items": [{
                    "id": f"{canvas}/page",
                    "type": "AnnotationPage",
                    "items": [{
                        "id": f"{canvas}/page/image",
                        "type": "Annotation",
                        "motivation": "painting",
                        "target": canvas,
                        "body": {
                            "id": f"{image}/full/max/0/default.jpg",
                            "type": "Image",
                            "format": "image/jpeg",
                            "width": width,
                            "height": height,
                            "service": [{"id": image, "type": "ImageService3", "profile": PROFILE}],
                        },
                    }],
                }],
            }


def _attributes(row: InstanceRow) -> DicomJson:
    """The instance's stored DICOM JSON, for its first values."""
    return DicomJson(json.loads(row.dicom_json), texts={})
