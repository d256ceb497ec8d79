"""IIIF Image API 3.0 (compliance level 1) over every frame of the archive.

The image service of a frame is
`/iiif/studies/{study}/series/{series}/instances/{sop}/frames/{n}` (prefix
`/iiif`, the rest its identifier), so OpenSeadragon and Mirador open large
frames with deep zoom, unmodified. `info.json` advertises the stored tiles
and resolution levels (`tiles` with scale factors 1, 2, 4 ... 2^D; untiled
frames are one tile), so every tile a viewer asks for is one cut-out of the
stored tiles at one level (`regions`): nothing else is read or decoded.

Images are windowed to 8 bits as `rendered` does (Modality LUT, then the
instance's VOI: its window or VOI LUT). An instance without either gets one
window for the whole frame, the range of its lowest resolution level, so
that neighbouring tiles match. Both jpg and png are 8-bit: png is lossless
after windowing, for pixel-exact use.
"""

from __future__ import annotations

import functools

import numpy as np
from fastapi import APIRouter
from PIL import Image
from pydicom.pixels import apply_modality_lut
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from transcode.codecs.codestream import CodestreamIndex
from transcode.server import iiif_request, regions, render
from transcode.server.frames import StoredInstance
from transcode.server.render import RenderLimits, Window
from transcode.server.responses import cache_headers, etag, not_modified
from transcode.server.service import Service

CONTEXT = "http://iiif.io/api/image/3/context.json"
PROFILE = "level1"
EXTRA_FEATURES = ["regionByPct", "sizeByPct", "sizeByConfinedWh", "sizeUpscaling"]
BASE = "/iiif/studies/{study}/series/{series}/instances/{sop}/frames/{frame}"


def routes(service: Service, limits: RenderLimits | None = None) -> APIRouter:
    """The IIIF routes, to be mounted at the application's root."""
    router = APIRouter()
    limits = limits or RenderLimits()
    catalog, reader = service.catalog, service.reader

    def frame_of(study: str, series: str, sop: str, frame: int) -> StoredInstance:
        stored = catalog.instance(study, series, sop)
        reader.check(stored, [frame])
        return stored

    def frame_window(stored: StoredInstance, frame: int) -> Window | None:
        """The window of a grey-scale frame without its own VOI: the
        modality range of its lowest level."""
        return _frame_window(stored.row.study_uid, stored.row.series_uid, stored.row.sop_uid, frame,
                             stored.content([frame])[0])

    @functools.lru_cache(maxsize=1024)
    def _frame_window(study: str, series: str, sop: str, frame: int, content: str) -> Window | None:
        """Cached by the frame's recorded digest (`content`): a replaced
        instance is a new key."""
        stored = frame_of(study, series, sop, frame)
        ds = service.image_header(stored.row)
        if "WindowCenter" in ds or "VOILUTSequence" in ds or ds.get("SamplesPerPixel", 1) != 1:
            return None
        low = reader.pixels(stored, frame, 0 if stored.transcoded else None)
        return render.range_window(apply_modality_lut(low, ds).astype(np.float64))

    @router.get(BASE)
    def base(request: Request) -> Response:
        return RedirectResponse(str(request.url.replace(query="")).rstrip("/") + "/info.json", status_code=303)

    @router.get(BASE + "/info.json")
    def info(request: Request, study: str, series: str, sop: str, frame: int) -> Response:
        stored = frame_of(study, series, sop, frame)
        headers = cache_headers(etag("iiif-info", *stored.content([frame]), str(frame), str(request.base_url)),
                                immutable=True)
        if (cached := not_modified(request, headers)) is not None:
            return cached
        ds = service.image_header(stored.row)
        colour = int(ds.get("SamplesPerPixel", 1)) > 1 or ds.get("PhotometricInterpretation") == "PALETTE COLOR"
        body = {
            "@context": CONTEXT,
            "id": str(request.url.replace(query="")).removesuffix("/info.json"),
            "type": "ImageService3",
            "protocol": "http://iiif.io/api/image",
            "profile": PROFILE,
            "maxArea": limits.max_pixels,
            "extraFormats": ["png"],
            "extraQualities": ["gray", "color"] if colour else ["gray"],
            "extraFeatures": EXTRA_FEATURES,
            **_pyramid(stored.index(frame) if stored.transcoded else None, int(ds.Columns), int(ds.Rows),
                       limits.max_pixels),
        }
        json_ld = "application/ld+json" in (request.headers.get("accept") or "")
        return JSONResponse(body, headers=headers, media_type=f'application/ld+json;profile="{CONTEXT}"' if json_ld
                            else "application/json")

    @router.get(BASE + "/{region}/{size}/{rotation}/{image}")
    def image(request: Request, study: str, series: str, sop: str, frame: int, region: str, size: str,
              rotation: str, image: str) -> Response:
        stored = frame_of(study, series, sop, frame)
        ds = service.image_header(stored.row)
        colour = int(ds.get("SamplesPerPixel", 1)) > 1 or ds.get("PhotometricInterpretation") == "PALETTE COLOR"
        asked = iiif_request.parse(region, size, rotation, image, width=int(ds.Columns), height=int(ds.Rows),
                                   colour=colour, max_area=limits.max_pixels)
        headers = cache_headers(etag("iiif", *stored.content([frame]), str(frame), repr(asked)), immutable=True)
        if (cached := not_modified(request, headers)) is not None:
            return cached
        if stored.transcoded:
            box = asked.box
            level = render.level_for(stored.index(frame), asked.size, limits.max_pixels,
                                     (box.x, box.y, box.width, box.height))
        else:
            render.check_decodable(int(ds.Columns), int(ds.Rows), limits)
            level = None
        pixels = regions.pixels(reader, stored, frame, asked.box, level)
        shown = render.to_rgb_or_grey(pixels, ds, frame_window(stored, frame))
        if asked.quality == "gray" and shown.ndim == 3:
            shown = np.asarray(Image.fromarray(shown).convert("L"))
        return Response(render.encode_image(shown, asked.size, asked.media_type), media_type=asked.media_type,
                        headers={**headers, "Link": f'<{CONTEXT.replace("context.json", "level1.json")}>;rel="profile"'})

    return router


def _pyramid(index: CodestreamIndex | None, width: int, height: int, max_pixels: int) -> dict[str, object]:
    """`width`, `height`, `tiles` and `sizes` from the stored tiles and
    levels (a frame kept as is: one tile, one size)."""
    if index is None:
        return {"width": width, "height": height, "tiles": [{"width": width, "height": height, "scaleFactors": [1]}],
                "sizes": [{"width": width, "height": height}]}
    sizes = [index.resolution_size(level) for level in range(index.resolutions)]
    return {
        "width": index.width,
        "height": index.height,
        "tiles": [{"width": index.tile_width, "height": index.tile_height,
                   "scaleFactors": [1 << r for r in range(index.resolutions)]}],
        "sizes": [{"width": w, "height": h} for w, h in sizes if w * h <= max_pixels],
    }

