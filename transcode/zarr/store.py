"""A read-only zarr v3 store over archived frames (zarr-python 3's `Store`).

Keys are those of an OME-Zarr image (see `layout`): `zarr.json` (the group
with its multiscales), `{k}/zarr.json` (dataset k's array metadata, made
from the index, no object read) and `{k}/c/[0/]{z}/0/0` (the chunk of slice
z at dataset k: one whole frame at that resolution, uncompressed
little-endian). A chunk is decoded on demand from the stored codestream
prefix that holds the level (`FrameReader.pixels`: only those bytes are
read, and they are checked against the digests recorded at ingest); frames
kept as is are decoded through the DICOM reader. Chunks are not tiles: a
tiled frame's chunk at a level is the whole frame at that level.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable

import numpy as np
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype

from transcode.server.catalog import Catalog
from transcode.server.frames import FrameReader
from transcode.zarr.layout import Volume

METADATA = "zarr.json"


class ViewStore(Store):
    """The zarr view of one `Volume`, its instances looked up in `catalog`
    and their frames read through `reader`."""

    supports_writes = False
    supports_deletes = False
    supports_listing = True
    supports_partial_writes = False

    def __init__(self, catalog: Catalog, reader: FrameReader, volume: Volume) -> None:
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

    def _chunk_at(self, key: str) -> tuple[int, int] | None:
        """(dataset, slice) of a chunk key (`{k}/c/...`), or None if it names no chunk."""
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
        return int(dataset), indices[-3]

    def chunk(self, dataset: int, z: int) -> bytes:
        """Slice `z` at dataset `dataset`, decoded from its level prefix."""
        where = self.volume.slices[z]
        stored = self.catalog.instance(where.study, where.series, where.sop)
        if stored.transcoded:
            decompositions = stored.index(where.number).decompositions
            frame = self.reader.pixels(stored, where.number, decompositions - dataset)
        else:
            frame = self.reader.pixels(stored, where.number)
        if frame.ndim == 3:  # (rows, columns, samples) -> channels first
            frame = np.moveaxis(frame, -1, 0)
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
            for z in range(len(self.volume.slices)):
                yield f"{dataset}/c/{lead}{z}/0/0"


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
