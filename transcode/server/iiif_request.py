"""IIIF Image API 3.0 image requests: `{region}/{size}/{rotation}/{quality}.{format}`.

Parsed into full-resolution pixels and an output size, following the
specification (https://iiif.io/api/image/3.0/#4-image-requests): a region
reaching past the image is cropped to it, one wholly outside is 400; sizes
larger than the region need the `^` prefix; the output never exceeds
`max_area` pixels. Syntax errors are 400; valid requests for what this
server does not do (rotation other than 0, mirroring, bitonal, formats
other than jpg and png) are 501.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from transcode.server.errors import Problem
from transcode.server.regions import Box

FORMATS = {"jpg": "image/jpeg", "png": "image/png"}
#: Valid format names of the specification this server does not produce.
OTHER_FORMATS = ("tif", "gif", "pdf", "jp2", "webp")
_NUMBER = r"\d+(?:\.\d+)?"
_PCT_REGION = re.compile(rf"pct:({_NUMBER}),({_NUMBER}),({_NUMBER}),({_NUMBER})")
_PX_REGION = re.compile(r"(\d+),(\d+),(\d+),(\d+)")
_SIZE = re.compile(r"(\^?)(?:(max)|pct:(" + _NUMBER + r")|(!?)(\d*),(\d*))")


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """What to send: `box` of the image, scaled to `size` (width, height),
    in `quality` (default, color or gray), as `media_type`."""

    box: Box
    size: tuple[int, int]
    quality: str
    media_type: str


def parse(region: str, size: str, rotation: str, image: str, *, width: int, height: int, colour: bool,
          max_area: int) -> ImageRequest:
    """The request for a `width` x `height` image (`colour`: it has colour)."""
    box = parse_region(region, width, height)
    out = parse_size(size, box.width, box.height, max_area)
    _check_rotation(rotation)
    quality, _, extension = image.rpartition(".")
    if quality not in ("default", "color", "gray", "bitonal"):
        raise Problem(400, "bad_quality", f"quality is default, color, gray or bitonal, not {quality!r}")
    if quality == "bitonal":
        raise Problem(501, "unsupported_quality", "bitonal images are not produced: ask for default or gray")
    if quality == "color" and not colour:
        raise Problem(400, "bad_quality", "this image is grey-scale: ask for default or gray")
    if extension in OTHER_FORMATS:
        raise Problem(501, "unsupported_format", f"{extension} is not produced: ask for jpg or png")
    if extension not in FORMATS:
        raise Problem(400, "bad_format", f"format is jpg or png, not {extension!r}")
    return ImageRequest(box, out, quality, FORMATS[extension])


def parse_region(text: str, width: int, height: int) -> Box:
    """`full`, `square`, `x,y,w,h` or `pct:x,y,w,h`, cropped to the image."""
    if text == "full":
        return Box(0, 0, width, height)
    if text == "square":
        side = min(width, height)
        return Box((width - side) // 2, (height - side) // 2, side, side)
    if (match := _PX_REGION.fullmatch(text)) is not None:
        x, y, w, h = (int(v) for v in match.groups())
    elif (match := _PCT_REGION.fullmatch(text)) is not None:
        px, py, pw, ph = (float(v) for v in match.groups())
        x, y = round(px * width / 100), round(py * height / 100)
        w, h = round(pw * width / 100), round(ph * height / 100)
    else:
        raise Problem(400, "bad_region", f"region is full, square, x,y,w,h or pct:x,y,w,h, not {text!r}")
    if w == 0 or h == 0 or x >= width or y >= height:
        raise Problem(400, "bad_region", f"the region {text} is empty or outside the {width}x{height} image")
    return Box(x, y, min(w, width - x), min(h, height - y))


def parse_size(text: str, width: int, height: int, max_area: int) -> tuple[int, int]:
    """The output size for a `width` x `height` region."""
    match = _SIZE.fullmatch(text)
    if match is None or (match.group(5) == "" and match.group(6) == "") \
            or (match.group(4) and not (match.group(5) and match.group(6))):
        raise Problem(400, "bad_size", f"size is max, w,, ,h, pct:n, w,h or !w,h (^ to upscale), not {text!r}")
    upscale, is_max, pct, confined, w, h = match.groups()
    if is_max:
        out = (width, height)
        if upscale and width * height < max_area:
            scale = math.sqrt(max_area / (width * height))
            out = (max(1, int(width * scale)), max(1, int(height * scale)))
    elif pct is not None:
        out = (round(width * float(pct) / 100), round(height * float(pct) / 100))
    elif confined:
        scale = min(int(w) / width, int(h) / height)
        out = (round(width * scale), round(height * scale))
    elif w and h:
        out = (int(w), int(h))
    elif w:
        out = (int(w), round(height * int(w) / width))
    else:
        out = (round(width * int(h) / height), int(h))
    if out[0] < 1 and out[1] < 1 or (w == "0" or h == "0"):
        raise Problem(400, "bad_size", f"size {text} of a {width}x{height} region is empty")
    out = (max(out[0], 1), max(out[1], 1))  # a thin region scaled down keeps one pixel across
    if not upscale and (out[0] > width or out[1] > height):
        raise Problem(400, "bad_size", f"size {text} is larger than the {width}x{height} region: prefix it with ^ "
                      "to upscale")
    if out[0] * out[1] > max_area:
        raise Problem(400, "bad_size", f"size {out[0]}x{out[1]} is over the {max_area:,}-pixel maximum (maxArea)")
    return out


def _check_rotation(text: str) -> None:
    match = re.fullmatch(rf"(!?)({_NUMBER})", text)
    if match is None or float(match.group(2)) > 360:
        raise Problem(400, "bad_rotation", f"rotation is 0 to 360, optionally after !, not {text!r}")
    if match.group(1) or float(match.group(2)) != 0:
        raise Problem(501, "unsupported_rotation", "only rotation 0 (no mirroring) is produced")
