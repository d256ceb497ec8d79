"""A store in a dict, for tests and for code that needs no durability."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from transcode.stores.base import ByteRange, ObjectMissing, Store, check_key, check_prefix, cut, read_source


class MemoryStore(Store):
    """Objects as immutable `bytes` in a dict: a `put` swaps one reference
    under a lock, so readers see the old object or the new whole."""

    def __init__(self, *, read_only: bool = False) -> None:
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.supports_writes = not read_only

    def __repr__(self) -> str:
        return f"MemoryStore({len(self._objects)} objects)"

    def get(self, key: str) -> bytes:
        with self._lock:
            data = self._objects.get(check_key(key))
        if data is None:
            raise ObjectMissing(f"{key} is not stored")
        return data

    def get_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[bytes]:
        return cut(memoryview(self.get(key)), key, ranges)

    def put(self, key: str, source: Path | bytes) -> None:
        self.check_writable()
        data = read_source(source)
        with self._lock:
            self._objects[check_key(key)] = data

    def delete(self, key: str) -> None:
        self.check_writable()
        with self._lock:
            self._objects.pop(check_key(key), None)

    def exists(self, key: str) -> bool:
        with self._lock:
            return check_key(key) in self._objects

    def size(self, key: str) -> int:
        return len(self.get(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        check_prefix(prefix)
        with self._lock:
            keys = [key for key in self._objects if key.startswith(prefix)]
        return iter(keys)
