"""Progressive: how much of a codestream each resolution level needs, how
long each level takes to decode, and the bytes and time to a thumbnail.

Frames are square 12-bit phantoms of each size, encoded as the pipeline
does (tiled above 2048 pixels, resolution-major), so a level's bytes are a
prefix: what a viewer fetches with a byte range or `?level=`.
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

from transcode.bench.measure import repeat
from transcode.codecs import htj2k
from transcode.codecs.htj2k import EncodeSettings
from transcode.phantom import phantom
from transcode.server import render

THUMBNAIL = (128, 128)


def run(sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    return [_one(side, repeats) for side in sizes]


def _one(side: int, repeats: int) -> dict[str, Any]:
    grey = Dataset()
    grey.PhotometricInterpretation = "MONOCHROME2"
    frame = phantom(side, side, bits=12, signed=False, seed=side)
    data, index = htj2k.encode(frame, colour_transform=False, settings=EncodeSettings())
    levels = []
    for level in range(index.resolutions):
        end = index.level_end(level)
        prefix = data[:end]
        seconds = repeat(lambda p=prefix, lv=level: htj2k.decode(p, level=lv, decompositions=index.decompositions),
                         repeats)
        width, height = index.resolution_size(level)
        levels.append({"level": level, "scale": f"1/{1 << (index.decompositions - level)}",
                       "width": width, "height": height, "bytes": end, "share": end / index.length,
                       "decode_s": min(seconds)})
    size = render.fit(side, side, THUMBNAIL)
    thumb_level = render.level_for(index, size)

    def thumbnail(lv: int | None = thumb_level) -> bytes:
        pixels = htj2k.decode(data[:index.level_end(lv)] if lv is not None else data, level=lv,
                              decompositions=index.decompositions)
        return render.encode_image(render.to_rgb_or_grey(pixels, grey, None), size, "image/jpeg")

    return {
        "side": side, "raw_bytes": frame.nbytes, "codestream_bytes": index.length, "tiles": index.tiles,
        "levels": levels,
        "thumbnail": {"level": thumb_level, "bytes": index.level_end(thumb_level),
                      "seconds": min(repeat(thumbnail, repeats)),
                      "full_decode_seconds": min(repeat(lambda: thumbnail(None), repeats))},
    }
