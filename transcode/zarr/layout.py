"""How archived frames become an OME-Zarr image: which frame is which slice,
the array shape and data type, the resolution levels and the spacing.

A series is a stack of its frames in patient order: each slice's Image
Position (Patient) projected on the normal of its Image Orientation
(Patient) (the cross product of the row and column directions), so that
the stack runs along the normal whatever the file names or Instance
Numbers say; slices without a position or orientation go by Instance
Number. A multi-frame instance is its frames in stored order.

Resolution levels follow the stored codestreams: dataset "0" is the full
resolution and dataset "k" the frame after k wavelet decompositions (half
the side, rounded up, per step), which is exactly what a level prefix
decodes to. Frames kept as is (no levels) give only dataset "0"; a stack
has as many datasets as its poorest frame has levels.

Tiled frames (`htj2k.EncodeSettings` tiles large frames) are chunked by
tile: a chunk is one stored tile at one level, (tile height, tile width)
halved k times at dataset "k", as long as the tile edges fall on whole
pixels there (tile sides divisible by 2^k; otherwise, and for untiled
frames, a chunk is the whole frame at that level). Every frame of the stack
must share the tile size for it to be the chunk shape.

Colour frames get a channel axis in front (OME-NGFF orders axes time,
channel, space): `(c, z, y, x)`, each chunk holding all channels of one
frame; values are as stored (RGB for transcoded colour frames, the stored
photometric interpretation for frames kept as is).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np

from transcode.catalog.base import InstanceRow
from transcode.server.errors import Problem
from transcode.server.frames import StoredInstance
from transcode.server.lookup import Lookup

#: The OME-NGFF version written to the group attributes.
NGFF_VERSION = "0.5"
_POSITION, _ORIENTATION, _NUMBER = "00200032", "00200037", "00200013"
_ROWS, _COLUMNS, _SAMPLES, _ALLOCATED, _SIGNED = "00280010", "00280011", "00280002", "00280100", "00280103"
_PIXEL_SPACING, _SLICE_SPACING, _THICKNESS = "00280030", "00180088", "00180050"


@dataclass(frozen=True, slots=True)
class Slice:
    """One frame of the stack: 1-based `number` of instance `sop`."""

    study: str
    series: str
    sop: str
    number: int


@dataclass(frozen=True, slots=True)
class Volume:
    """What the zarr view of a series or multi-frame instance shows.

    `shapes[k]` is (rows, columns) of dataset "k"; `spacing` is (slice,
    row, column) spacing in millimetres at full resolution."""

    name: str
    slices: tuple[Slice, ...]
    dtype: str
    samples: int
    shapes: tuple[tuple[int, int], ...]
    spacing: tuple[float, float, float]
    tile: tuple[int, int] | None = None  # (rows, columns) of every frame's stored tiles, None if untiled

    @property
    def levels(self) -> int:
        return len(self.shapes)

    def array_shape(self, dataset: int) -> tuple[int, ...]:
        rows, columns = self.shapes[dataset]
        channels = (self.samples,) if self.samples > 1 else ()
        return (*channels, len(self.slices), rows, columns)

    def tiled(self, dataset: int) -> bool:
        """Whether dataset `dataset`'s chunks are tiles (else whole frames):
        frames are tiled and the tile edges fall on whole pixels there."""
        step = 1 << dataset
        return self.tile is not None and self.tile[0] % step == 0 and self.tile[1] % step == 0

    def plane(self, dataset: int) -> tuple[int, int]:
        """(rows, columns) of one chunk of dataset `dataset`: a tile at that level, or the frame."""
        if self.tiled(dataset):
            return self.tile[0] >> dataset, self.tile[1] >> dataset  # type: ignore[index]
        return self.shapes[dataset]

    def chunk_shape(self, dataset: int) -> tuple[int, ...]:
        return (*self.array_shape(dataset)[:-3], 1, *self.plane(dataset))

    def grid(self, dataset: int) -> tuple[int, int]:
        """How many chunks down and across one frame of dataset `dataset`."""
        (rows, columns), (chunk_rows, chunk_columns) = self.shapes[dataset], self.plane(dataset)
        return -(-rows // chunk_rows), -(-columns // chunk_columns)

    def group_json(self) -> dict[str, Any]:
        """The root group's zarr.json: OME-NGFF 0.5 multiscales."""
        space = [{"name": axis, "type": "space", "unit": "millimeter"} for axis in ("z", "y", "x")]
        axes = ([{"name": "c", "type": "channel"}] if self.samples > 1 else []) + space
        datasets = []
        for k, (rows, columns) in enumerate(self.shapes):
            full_rows, full_columns = self.shapes[0]
            scale = [self.spacing[0], self.spacing[1] * full_rows / rows, self.spacing[2] * full_columns / columns]
            datasets.append({"path": str(k), "coordinateTransformations": [
                {"type": "scale", "scale": ([1.0] if self.samples > 1 else []) + scale}]})
        multiscales = [{"name": self.name, "axes": axes, "datasets": datasets}]
        return {"zarr_format": 3, "node_type": "group",
                "attributes": {"ome": {"version": NGFF_VERSION, "multiscales": multiscales}}}

    def array_json(self, dataset: int) -> dict[str, Any]:
        """Dataset `dataset`'s zarr.json: uncompressed little-endian chunks of one tile or frame each."""
        names = (["c"] if self.samples > 1 else []) + ["z", "y", "x"]
        return {"zarr_format": 3, "node_type": "array", "shape": list(self.array_shape(dataset)),
                "data_type": self.dtype,
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(self.chunk_shape(dataset))}},
                "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
                "fill_value": 0, "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
                "attributes": {}, "dimension_names": names}


def series_volume(catalog: Lookup, study: str, series: str) -> Volume:
    """The stack of every frame of a series' instances, in patient order
    (404 when the series has no instances)."""
    rows = catalog.instances(study, series)
    metas = [json.loads(row.dicom_json) for row in rows]
    normal = _normal(metas[0])
    if normal is not None and all(_value(m, _POSITION, 3) and _normal(m) is not None for m in metas):
        keys = [float(np.dot(normal, _value(m, _POSITION, 3))) for m in metas]  # type: ignore[arg-type]
    else:
        keys = [float((_value(m, _NUMBER) or [0])[0]) for m in metas]
        normal = None
    order = sorted(range(len(rows)), key=lambda i: (keys[i], i))
    slices = tuple(Slice(rows[i].study_uid, rows[i].series_uid, rows[i].sop_uid, n)
                   for i in order for n in range(1, rows[i].frames + 1))
    steps = [b - a for a, b in zip(sorted(keys), sorted(keys)[1:], strict=False)] if normal is not None else []
    between = statistics.median(steps) if steps and statistics.median(steps) > 0 else _slice_spacing(metas[0])
    return _volume(catalog, f"series {series}", [rows[i] for i in order], [metas[i] for i in order], slices, between)


def instance_volume(catalog: Lookup, study: str, series: str, sop: str) -> Volume:
    """The frames of one instance, in stored order."""
    row = catalog.row(study, series, sop)
    meta = json.loads(row.dicom_json)
    slices = tuple(Slice(row.study_uid, row.series_uid, row.sop_uid, n) for n in range(1, row.frames + 1))
    return _volume(catalog, f"instance {sop}", [row], [meta], slices, _slice_spacing(meta))


def _volume(catalog: Lookup, name: str, rows: list[InstanceRow], metas: list[dict[str, Any]],
            slices: tuple[Slice, ...], between: float) -> Volume:
    """The common frame geometry of `rows` (409 when their frames differ in size or pixel format)."""
    formats = {tuple((_value(m, tag) or [None])[0] for tag in (_ROWS, _COLUMNS, _SAMPLES, _ALLOCATED, _SIGNED))
               for m in metas}
    if len(formats) != 1:
        raise Problem(409, "mixed_frames", f"the frames of {name} differ in size or pixel format: no single array")
    height, width, samples, allocated, signed = formats.pop()
    if not height or not width or allocated not in (8, 16, 32):
        raise Problem(501, "no_array", f"the frames of {name} are not integer images of 8, 16 or 32 bits")
    codings = {_coding(catalog.instance(r.study_uid, r.series_uid, r.sop_uid)) for r in rows}
    levels = min(levels for levels, _ in codings)
    tiles = {tile for _, tile in codings}
    shapes = tuple((-(-height // (1 << k)), -(-width // (1 << k))) for k in range(levels + 1))
    spacing = _value(metas[0], _PIXEL_SPACING, 2) or [1.0, 1.0]
    dtype = f"{'int' if signed else 'uint'}{allocated}"
    return Volume(name, slices, dtype, int(samples or 1), shapes, (between, float(spacing[0]), float(spacing[1])),
                  tiles.pop() if len(tiles) == 1 else None)


def _coding(stored: StoredInstance) -> tuple[int, tuple[int, int] | None]:
    """How many levels below full resolution every frame of `stored` has,
    and its tile size (rows, columns) when it has more than one tile
    (frames of one instance share their coding parameters)."""
    if not stored.transcoded:
        return 0, None
    index = stored.index(1)
    return index.decompositions, (index.tile_height, index.tile_width) if index.tiles > 1 else None


def _value(meta: dict[str, Any], tag: str, count: int = 1) -> list[Any] | None:
    """The element's values when it has at least `count` of them."""
    values = meta.get(tag, {}).get("Value")
    return values if values and len(values) >= count else None


def _normal(meta: dict[str, Any]) -> np.ndarray | None:
    cosines = _value(meta, _ORIENTATION, 6)
    if cosines is None:
        return None
    normal = np.cross(np.asarray(cosines[:3], float), np.asarray(cosines[3:6], float))
    length = float(np.linalg.norm(normal))
    return normal / length if length > 0 else None


def _slice_spacing(meta: dict[str, Any]) -> float:
    """Spacing Between Slices, else Slice Thickness, else 1."""
    for tag in (_SLICE_SPACING, _THICKNESS):
        if (values := _value(meta, tag)) and float(values[0]) > 0:
            return float(values[0])
    return 1.0
