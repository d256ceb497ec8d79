"""A read-only zarr v3 store over archived frames (zarr-python 3's `Store`).

Keys are those of an OME-Zarr image (see `layout`): `zarr.json` (the group
with its multiscales), `{k}/zarr.json` (dataset k's array metadata, made
from the index, no object read) and `{k}/c/[0/]{z}/{i}/{j}` (chunk i, j of
slice z at dataset k, uncompressed little-endian). For tiled frames a chunk
is one stored tile at that level, decoded from a cut-out of only that
tile's tile-parts up to the level (`server.regions`: read in one
`read_ranges` call and checked piece by piece against the checksums
recorded at ingest); edge chunks are padded with zeros to the chunk shape,
as zarr's regular grid expects. Otherwise a chunk is the whole frame at
that level, decoded from the stored codestream prefix that holds the level
(`FrameReader.pixels`: only those bytes are read and checked); frames kept
as is are decoded through the DICOM reader.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable

import numpy as np
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype

from transcode.server import regions
from transcode.server.frames import FrameReader
from transcode.server.lookup import Lookup
from transcode.zarr.layout import Volume

METADATA = "zarr.json"


class ViewStore(Store):
    """The zarr view of one `Volume`, its instances looked up in `catalog`
    and their frames read through `reader`."""

    supports_writes = False
    supports_deletes = False
    supports_listing = True
    supports_partial_writes = False

    def __init__(self, catalog: Lookup, reader: FrameReader, volume: Volume) -> None:
        super().__init__(read_only=True)
        self.catalog, self.reader = catalog, reader
        self.volume = volume
        self._metadata = tuple(f"{k}/{METADATA}" for k in range(volume.levels))  # the arrays' zarr.json

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ViewStore) and other.reader is self.reader and other.volume == self.volume

    def __hash__(self) -> int:
        return hash((id(self.reader), self.volume))

    def __repr__(self) -> str:
        return f"ViewStore({self.volume.name})"

    def value(self, key: str) -> bytes | None:
        """The bytes stored under `key`, or None for a key the view does not hold."""
        if key == METADATA:
            return _json(self.volume.group_json())
        if key in self._metadata:
            return _json(self.volume.array_json(int(key.partition("/")[0])))
        where = self._chunk_at(key)
        return None if where is None else self.chunk(*where)

    def _chunk_at(self, key: str) -> tuple[int, int, int, int] | None:
        """(dataset, slice, chunk row, chunk column) of a chunk key
        (`{k}/c/...`), or None if it names no chunk."""
        dataset, _, rest = key.partition("/")
        if not dataset.isdigit() or int(dataset) >= self.volume.levels:
            return None
        parts = rest.split("/")
        shape = self.volume.array_shape(int(dataset))
        if parts[0] != "c" or len(parts) != len(shape) + 1 or not all(p.isdigit() for p in parts[1:]):
            return None
        chunks = [-(-n // c) for n, c in zip(shape, self.volume.chunk_shape(int(dataset)), strict=True)]
        indices = [int(p) for p in parts[1:]]
        if any(i >= n for i, n in zip(indices, chunks, strict=True)):
            return None
        return int(dataset), indices[-3], indices[-2], indices[-1]

    def chunk(self, dataset: int, z: int, row: int = 0, column: int = 0) -> bytes:
        """Chunk `row`, `column` of slice `z` at dataset `dataset`: its tile
        decoded from a cut-out, or the whole frame from its level prefix."""
        where = self.volume.slices[z]
        stored = self.catalog.instance(where.study, where.series, where.sop)
        if self.volume.tiled(dataset):
            tile_rows, tile_columns = self.volume.tile  # type: ignore[misc]
            rows, columns = self.volume.shapes[0]
            x, y = column * tile_columns, row * tile_rows
            box = regions.Box(x, y, min(tile_columns, columns - x), min(tile_rows, rows - y))
            level = stored.index(where.number).decompositions - dataset
            frame = regions.pixels(self.reader, stored, where.number, box, level)
        elif stored.transcoded:
            decompositions = stored.index(where.number).decompositions
            frame = self.reader.pixels(stored, where.number, decompositions - dataset)
        else:
            frame = self.reader.pixels(stored, where.number)
        if frame.ndim == 3:  # (rows, columns, samples) -> channels first
            frame = np.moveaxis(frame, -1, 0)
        chunk_rows, chunk_columns = self.volume.plane(dataset)
        edge = [(0, 0)] * (frame.ndim - 2) + [(0, chunk_rows - frame.shape[-2]), (0, chunk_columns - frame.shape[-1])]
        frame = np.pad(frame, edge) if any(after for _, after in edge) else frame
        return np.ascontiguousarray(frame, dtype=np.dtype(self.volume.dtype).newbyteorder("<")).tobytes()

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        data = await asyncio.to_thread(self.value, key)  # decoders release the GIL: chunks decode in parallel
        return None if data is None else prototype.buffer.from_bytes(_cut(data, byte_range))

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(key, prototype, r) for key, r in key_ranges)))

    async def exists(self, key: str) -> bool:
        return key == METADATA or key in self._metadata or self._chunk_at(key) is not None

    async def set(self, key: str, value: Buffer) -> None:
        self._check_writable()

    async def delete(self, key: str) -> None:
        self._check_writable()

    async def list(self) -> AsyncIterator[str]:
        for key in self._all_keys():
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for key in self._all_keys():
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        seen = set()
        for key in self._all_keys():
            if key.startswith(prefix) and (child := key[len(prefix):].split("/")[0]) not in seen:
                seen.add(child)
                yield child

    def _all_keys(self) -> Iterable[str]:
        yield METADATA
        yield from self._metadata
        lead = "0/" if self.volume.samples > 1 else ""
        for dataset in range(self.volume.levels):
            down, across = self.volume.grid(dataset)
            for z in range(len(self.volume.slices)):
                for i in range(down):
                    for j in range(across):
                        yield f"{dataset}/c/{lead}{z}/{i}/{j}"


def _json(document: dict[str, object]) -> bytes:
    return json.dumps(document).encode()


def _cut(data: bytes, byte_range: ByteRequest | None) -> bytes:
    if byte_range is None:
        return data
    if isinstance(byte_range, RangeByteRequest):
        return data[byte_range.start:byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return data[byte_range.offset:]
    if isinstance(byte_range, SuffixByteRequest):
        return data[-byte_range.suffix:] if byte_range.suffix else b""
    raise TypeError(f"unexpected byte range {byte_range!r}")
