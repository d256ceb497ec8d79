"""A folder archive that counts the object bytes read through it: what a
benchmark or test reports as "bytes read" for a reduced-resolution view."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from transcode.archive import FolderArchive
from transcode.archive.store import ByteRange


class CountingArchive(FolderArchive):
    """`FolderArchive` whose `read_bytes` is the number of object bytes
    read so far (by `read`, `read_into` and `read_ranges`, from any thread)."""

    read_bytes = 0
    _lock = threading.Lock()

    def read(self, relative: str, start: int = 0, end: int | None = None) -> bytes:
        data = super().read(relative, start, end)
        self._count(len(data))
        return data

    def read_into(self, relative: str, start: int, view: memoryview) -> None:
        super().read_into(relative, start, view)
        self._count(len(view))

    def read_ranges(self, relative: str, ranges: Sequence[ByteRange]) -> list[bytearray]:
        runs = super().read_ranges(relative, ranges)
        self._count(sum(len(run) for run in runs))
        return runs

    def _count(self, n: int) -> None:
        with self._lock:
            self.read_bytes += n
