"""The `Store` interface: stored objects by key, byte ranges, capabilities.

Modelled on zarr-python 3's `zarr/abc/store.py`, synchronous and smaller:
whole objects, typed byte ranges (`ByteRange`, zarr's `RangeByteRequest`)
and several ranges of one object in one call (`get_ranges`, zarr's
`get_partial_values` for one key), with capability flags a caller checks
instead of asking whether there is a local path.

Keys are `/`-separated relative names (`objects/STUDY/SERIES/SOP.dcm`);
a backend maps them to paths or object names and refuses any that could
leave its root (an empty part, `.`, `..`, a leading `/`).

The contract every backend keeps (and `tests/store_conformance.py` checks):

- `put` is atomic: a reader sees the old object or the new one, never a
  part of either, and never a mix.
- A range is exact: `get_range(key, ByteRange(a, b))` returns `b - a` bytes
  or raises `ObjectTruncated` when the object ends before `b` (never fewer
  bytes in silence: a short frame is damage, not data). An empty range
  within the object is `b""`.
- A missing object raises `ObjectMissing`. Both errors subclass the builtin
  errors archive reads raised before stores existed (`FileNotFoundError`,
  `EOFError`), so `transcode.server.integrity` maps them as it did.
- An unreachable or failing backend raises `StoreUnavailable` (an
  `OSError`) once the client library's own retries are spent.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes [`start`, `end`) of an object (zarr's `RangeByteRequest`)."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"byte range [{self.start}, {self.end}) is empty or negative")


class StoreError(Exception):
    """A store operation failed; the subclass says how."""


class ObjectMissing(StoreError, FileNotFoundError):
    """No object is stored under the key."""


class ObjectTruncated(StoreError, EOFError):
    """The object ends before the byte range asked for does."""


class StoreUnavailable(StoreError, OSError):
    """The backend could not be reached or failed (after its retries)."""


class StoreReadOnly(StoreError, PermissionError):
    """The store was opened for reading only."""


class InvalidKey(StoreError, ValueError):
    """A key that could name something outside the store."""


_PART = re.compile(r"[^/\x00]+")


def check_key(key: str) -> str:
    """Return `key` when every `/`-separated part is a plain name, else
    raise InvalidKey (no empty part, `.`, `..` or NUL: nothing a backend
    could resolve outside its root)."""
    parts = key.split("/")
    if not key or any(part in (".", "..") or not _PART.fullmatch(part) for part in parts):
        raise InvalidKey(f"{key[:100]!r} is not a store key")
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix: empty (everything) or a key, optionally ending in `/`."""
    if prefix:
        check_key(prefix.removesuffix("/"))
    return prefix


class Store(ABC):
    """Objects by key. Subclasses implement the abstract byte operations;
    `get_range` and `get_ranges` have defaults in terms of each other that
    a backend overrides where it can read several ranges more cheaply."""

    #: `put` and `delete` work (False: opened read-only).
    supports_writes: bool = True
    #: `list` works.
    supports_listing: bool = True
    #: Ranges are read without fetching the whole object.
    supports_partial_reads: bool = True
    #: Reads wait on the network (a round trip at least, a timeout at
    #: worst): a caller on an event loop makes them on a thread instead.
    remote: bool = False

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The whole object; ObjectMissing when there is none."""

    def get_range(self, key: str, byte_range: ByteRange) -> bytes:
        """Exactly the bytes of `byte_range`; ObjectMissing, or
        ObjectTruncated when the object ends before the range does."""
        return self.get_ranges(key, [byte_range])[0]

    @abstractmethod
    def get_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[bytes]:
        """Several ranges of one object in one call, in the order asked
        (they may overlap or repeat). Errors as `get_range`, for any range."""

    @abstractmethod
    def put(self, key: str, source: Path | bytes) -> None:
        """Store `source` (a local file, read whole, or bytes) under `key`,
        atomically, replacing any object there; durable when it returns.
        StoreReadOnly when the store is read-only."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; nothing happens when there is none."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def size(self, key: str) -> int:
        """The object's length in bytes; ObjectMissing when there is none."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Every key that starts with `prefix` (a plain string prefix, as
        S3 has), in no particular order."""

    def rename(self, source: str, key: str) -> None:
        """Move the object at `source` to `key`, replacing any there: `key`
        shows the whole object or the old one, never a part (a backend
        copies server-side where it can); then `source` is deleted.
        ObjectMissing when `source` is missing."""
        self.put(key, self.get(source))
        self.delete(source)

    def check_writable(self) -> None:
        """Raise StoreReadOnly unless `supports_writes`."""
        if not self.supports_writes:
            raise StoreReadOnly(f"{self!r} is open read-only")

    def close(self) -> None:
        """Release connections or descriptors; the store is unusable after."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def cut(data: bytes | memoryview, key: str, ranges: Sequence[ByteRange]) -> list[bytes]:
    """`ranges` of a whole object held in memory, with the Store errors."""
    out = []
    for r in ranges:
        if r.end > len(data):
            raise ObjectTruncated(f"{key} has {len(data)} bytes, not {r.end}")
        out.append(bytes(data[r.start:r.end]))
    return out


def read_source(source: Path | bytes) -> bytes:
    """The bytes a `put` stores."""
    return source.read_bytes() if isinstance(source, Path) else bytes(source)
