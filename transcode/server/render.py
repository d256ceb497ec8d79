"""Rendered images and thumbnails (PS3.18 8.3.5, 10.4.1.1.3).

Grey-scale frames go through the Modality LUT (Rescale Slope/Intercept or a
Modality LUT Sequence), then the VOI transform: the `window` asked for, else
the data set's VOI LUT Sequence, else its first Window Center/Width, else the
frame's own range. MONOCHROME1 is inverted. Colour frames are shown as
stored (YBR converted to RGB, palettes applied).

A viewport smaller than the frame is served from a reduced resolution level
of the HTJ2K codestream: only the bytes of the levels it needs are read and
decoded, then Pillow resizes to the exact size.

Work is bounded by `RenderLimits`: the output is scaled down to fit its
pixel cap, and no frame or level larger than that cap is decoded for it
(a kept instance, which has no levels, is refused with 400 instead): a
118 kB file declaring a huge frame otherwise took the server to 2.4 GB.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, convert_color_space

from transcode.codecs import region
from transcode.codecs.codestream import CodestreamIndex
from transcode.server import params
from transcode.server.errors import Problem

WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
MAX_RENDER_PIXELS = 4096 * 4096
#: Grey-scale frames whose values span fewer than this many go through a lookup table.
LUT_MAX = 1 << 20


@dataclass(frozen=True, slots=True)
class RenderLimits:
    """`max_pixels`: the largest rendered image and the largest frame or
    resolution level decoded for one (rows x columns). The default, 4096 x
    4096, renders a 4096x5120 mammogram at 3663x4579 from the level below
    full resolution (2048x2560), upscaled. The grey-scale pipeline holds
    float64 copies of what it decodes, about 18 bytes per pixel
    (benchmarks/bounds.py): some 300 MB per request at the default."""

    max_pixels: int = MAX_RENDER_PIXELS


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: str = "LINEAR"


def parse_window(value: str | None) -> Window | None:
    """`window=center,width[,function]` (PS3.18 8.3.5.1.4)."""
    if not value:
        return None
    parts = value.split(",")
    if not 2 <= len(parts) <= 3:
        raise Problem(400, "bad_window", "window is center,width[,linear|linear-exact|sigmoid]")
    center, width = (params.decimal(part, "window center and width", "bad_window") for part in parts[:2])
    function = (parts[2] if len(parts) > 2 else "linear").strip().upper().replace("-", "_")
    if width < 1 or function not in WINDOW_FUNCTIONS:
        raise Problem(400, "bad_window", "window width must be >= 1 and the function linear, linear-exact or sigmoid")
    return Window(center, width, function)


@dataclass(frozen=True, slots=True)
class Viewport:
    """`viewport=vw,vh[,sx,sy,sw,sh]` (PS3.18 8.3.5.1.3): the output
    `size`, and the `source` region of the frame (x, y, w, h; w or h None:
    to the frame's edge), None for the whole frame."""

    size: tuple[int, int]
    source: tuple[int, int, int | None, int | None] | None = None

    def box(self, columns: int, rows: int) -> tuple[int, int, int, int]:
        """The source region of a `columns` x `rows` frame (x, y, w, h)."""
        if self.source is None:
            return 0, 0, columns, rows
        x, y, w, h = self.source
        return x, y, columns - x if w is None else w, rows - y if h is None else h


def parse_viewport(value: str | None) -> Viewport | None:
    """`viewport=vw,vh[,sx,sy,sw,sh]`; sx and sy default to 0, sw and sh to
    the rest of the frame. Negative sw or sh (flipping) is refused."""
    if not value:
        return None
    parts = value.split(",")
    if len(parts) not in (2, 6):
        raise Problem(400, "bad_viewport", "viewport is width,height or width,height,sx,sy,sw,sh in pixels")
    width, height = (params.whole(part, "viewport sides", "bad_viewport", low=1, high=8192) for part in parts[:2])
    # sx, sy, sw, sh: whole numbers, so never negative (no flipping here); empty for the default
    source = [params.whole(part, "viewport source values", "bad_viewport") if part.strip() else None
              for part in parts[2:]]
    if not source:
        return Viewport((width, height))
    x, y, w, h = source
    return Viewport((width, height), (x or 0, y or 0, w, h))


def fit(width: int, height: int, viewport: tuple[int, int] | None) -> tuple[int, int]:
    """The output size: the frame scaled down (never up) to fit the viewport."""
    if viewport is None:
        return width, height
    scale = min(viewport[0] / width, viewport[1] / height, 1.0)
    return max(1, round(width * scale)), max(1, round(height * scale))


def capped(size: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    """`size` scaled down (aspect kept) to at most `max_pixels` pixels."""
    width, height = size
    if width * height <= max_pixels:
        return size
    scale = (max_pixels / (width * height)) ** 0.5
    return max(1, int(width * scale)), max(1, int(height * scale))


def level_for(index: CodestreamIndex, size: tuple[int, int], max_pixels: int = MAX_RENDER_PIXELS,
              box: tuple[int, int, int, int] | None = None) -> int:
    """The lowest resolution level at least as large as `size` on both
    sides, or the largest level of at most `max_pixels` pixels if that is
    lower (then resized up a little: decoding stays bounded). With `box`
    (x, y, w, h at full resolution), the level of that region's pixels."""
    fits = 0
    for level in range(index.resolutions):
        if box is None:
            width, height = index.resolution_size(level)
        else:
            left, top, right, bottom = region.covering(index, *box, level)
            width, height = right - left, bottom - top
        if width * height > max_pixels:
            return fits
        fits = level
        if width >= size[0] and height >= size[1]:
            return level
    return fits


def check_decodable(columns: int, rows: int, limits: RenderLimits) -> None:
    """Refuse (400) to decode a whole frame larger than the pixel cap."""
    if columns * rows > limits.max_pixels:
        raise Problem(400, "image_too_large",
                      f"the frame is {columns}x{rows} pixels and stored without resolution levels; rendering "
                      f"decodes at most {limits.max_pixels:,} pixels (serve --max-render-pixels): retrieve the "
                      "frame instead")


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2: modality values to 0..255 floats. A LINEAR window
    of width 1 (the least allowed; also the fallback over a uniform frame)
    is the standard's threshold: above c - 0.5 white, else black."""
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    if window.function == "LINEAR_EXACT":
        return np.clip((values - c) / w + 0.5, 0.0, 1.0) * 255.0
    if w <= 1:
        return np.where(values > c - 0.5, 255.0, 0.0)
    return np.clip((values - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0) * 255.0


def grey_levels(frame: np.ndarray, ds: Dataset, window: Window | None) -> np.ndarray:
    """A grey-scale frame as 0..255 floats."""
    values = apply_modality_lut(frame, ds).astype(np.float64)
    if window is None and "VOILUTSequence" in ds:
        lut = ds.VOILUTSequence[0]
        bits = int(lut.LUTDescriptor[2])
        # a LUT is indexed by whole modality values
        indexed = apply_voi_lut(np.rint(values).astype(np.int64), ds, index=0, prefer_lut=True)
        out = indexed.astype(np.float64) * (255.0 / ((1 << bits) - 1))
    else:
        if window is None:
            window = _dataset_window(ds) or range_window(values)
        out = apply_window(values, window)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        out = 255.0 - out
    return out


def _dataset_window(ds: Dataset) -> Window | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    first = lambda v: float(v[0] if hasattr(v, "__len__") and not isinstance(v, str) else v)
    function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
    return Window(first(center), max(first(width), 1.0), function if function in WINDOW_FUNCTIONS else "LINEAR")


def range_window(values: np.ndarray) -> Window:
    """The window that spans `values` (modality values) from end to end."""
    low, high = float(values.min()), float(values.max())
    return Window((low + high + 1) / 2, max(high - low + 1, 1.0), "LINEAR")


def grey_image(frame: np.ndarray, ds: Dataset, window: Window | None) -> np.ndarray:
    """A grey-scale frame as uint8 for display: `grey_levels`, rounded.

    An integer frame goes through a lookup table over the values between
    its minimum and maximum, computed by `grey_levels` itself, so that the
    float stages run on a few thousand entries rather than on every pixel
    (12-bit CT: 4096 entries for 262144 pixels). The result is the same:
    the transforms are per value, and the one input that depends on the
    frame, the fallback window over its own range, comes out the same from
    the table's ends when the modality transform is linear (a Modality LUT
    Sequence with no window given takes the per-pixel path)."""
    low, high = (int(frame.min()), int(frame.max())) if frame.size else (0, 0)
    per_pixel = window is None and "ModalityLUTSequence" in ds and _dataset_window(ds) is None \
        and "VOILUTSequence" not in ds
    if frame.dtype.kind not in "iu" or high - low >= LUT_MAX or per_pixel:
        return np.rint(grey_levels(frame, ds, window)).astype(np.uint8)
    table = np.rint(grey_levels(np.arange(low, high + 1, dtype=np.int64), ds, window)).astype(np.uint8)
    if frame.dtype.itemsize == 2:  # indexed by the raw 16-bit words: no offset array (a quarter faster)
        by_word = np.empty(1 << 16, np.uint8)  # only the words from low to high are read
        by_word[np.arange(low, high + 1) & 0xFFFF] = table  # a signed value's word is its two's complement
        return np.take(by_word, frame.view(frame.dtype.str.replace("i", "u")))  # the byte order kept
    return np.take(table, np.subtract(frame, low, dtype=np.intp))  # take: twice as fast as table[...]


def to_rgb_or_grey(frame: np.ndarray, ds: Dataset, window: Window | None) -> np.ndarray:
    """uint8 (rows, columns) or (rows, columns, 3) for display."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        return grey_image(frame, ds, window)
    if photometric == "PALETTE COLOR":
        frame = apply_color_lut(frame, ds)
    elif photometric.startswith("YBR_FULL"):
        frame = convert_color_space(frame, photometric, "RGB")
    if frame.dtype != np.uint8:  # 16-bit colour (palettes, rare sources): keep the high byte
        shift = max(int(frame.max()).bit_length() - 8, 0) if frame.size else 0
        frame = (frame >> shift).astype(np.uint8)
    return frame


def encode_image(pixels: np.ndarray, size: tuple[int, int], media_type: str, quality: int = 90) -> bytes:
    """Resize to `size` and encode as JPEG or PNG."""
    image = Image.fromarray(pixels)
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    if media_type == "image/png":
        image.save(out, "PNG", compress_level=3)
    else:
        image.save(out, "JPEG", quality=quality)
    return out.getvalue()

