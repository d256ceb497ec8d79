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
from transcode.server.errors import Problem

WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
MAX_RENDER_PIXELS = 4096 * 4096


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
    try:
        center, width = float(parts[0]), float(parts[1])
    except (IndexError, ValueError):
        raise Problem(400, "bad_window", "window is center,width[,linear|linear-exact|sigmoid]") from None
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
    try:
        width, height = int(parts[0]), int(parts[1])
        source = [int(p) if p.strip() else None for p in parts[2:]]
    except (IndexError, ValueError):
        raise Problem(400, "bad_viewport", "viewport is width,height[,sx,sy,sw,sh] in pixels") from None
    if len(parts) not in (2, 6):
        raise Problem(400, "bad_viewport", "viewport is width,height or width,height,sx,sy,sw,sh")
    if not (1 <= width <= 8192 and 1 <= height <= 8192):
        raise Problem(400, "bad_viewport", "viewport sides must be 1 to 8192 pixels")
    if not source:
        return Viewport((width, height))
    x, y, w, h = source
    if any(v is not None and v < 0 for v in source):
        raise Problem(400, "bad_viewport", "viewport source regions are not flipped here: sx, sy, sw, sh are >= 0")
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
    """PS3.3 C.11.2.1.2: modality values to 0..255 floats."""
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    if window.function == "LINEAR_EXACT":
        return np.clip((values - c) / w + 0.5, 0.0, 1.0) * 255.0
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


def to_rgb_or_grey(frame: np.ndarray, ds: Dataset, window: Window | None) -> np.ndarray:
    """uint8 (rows, columns) or (rows, columns, 3) for display."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        if frame.dtype.kind in "iu" and frame.dtype.itemsize <= 2 and frame.size:
            return _through_table(frame, ds, window)
        return np.rint(grey_levels(frame, ds, window)).astype(np.uint8)
    if photometric == "PALETTE COLOR":
        frame = apply_color_lut(frame, ds)
    elif photometric.startswith("YBR_FULL"):
        frame = convert_color_space(frame, photometric, "RGB")
    if frame.dtype != np.uint8:  # 16-bit colour (palettes, rare sources): keep the high byte
        shift = max(int(frame.max()).bit_length() - 8, 0) if frame.size else 0
        frame = (frame >> shift).astype(np.uint8)
    return frame


def _through_table(frame: np.ndarray, ds: Dataset, window: Window | None) -> np.ndarray:
    """`grey_levels` of an integer frame through a lookup table: every step
    (Modality LUT, VOI, MONOCHROME1) maps each stored value on its own, so
    computing it once per value from the frame's minimum to its maximum
    gives the same pixels as computing it per pixel, at a fraction of the
    cost for a large frame (one gather instead of several float passes)."""
    low, high = int(frame.min()), int(frame.max())
    table = np.rint(grey_levels(np.arange(low, high + 1, dtype=frame.dtype), ds, window)).astype(np.uint8)
    if low == 0 and frame.dtype.kind == "u":
        return np.take(table, frame)
    return np.take(table, np.subtract(frame, low, dtype=np.int32))


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

