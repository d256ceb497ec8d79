"""Objects as files under a root folder: the embedded default's layout.

A key is a relative path (`objects/STUDY/SERIES/SOP.dcm` lands where
`FolderArchive` puts it). A `put` writes a temporary file beside the target
(`temporary_beside`: `.NAME.RANDOM.partial`, never listed), fsyncs it,
renames it over the target and fsyncs the folder, so a reader opens the old
file or the new one and a crash leaves one of them. Reads are `os.pread` on
a descriptor opened per call, no file object: this runs for every frame a
server sends.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from transcode.dicom.write import fsync_path, temporary_beside
from transcode.stores.base import ByteRange, ObjectMissing, ObjectTruncated, Store, check_key, check_prefix

_PARTIAL = ".partial"


class FolderStore(Store):
    """Files under `root` (created unless `read_only`)."""

    def __init__(self, root: str | os.PathLike[str], *, read_only: bool = False) -> None:
        self.root = Path(root)
        self.supports_writes = not read_only
        if not read_only:
            self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"FolderStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectMissing(f"{key} is not stored") from None

    def get_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[bytes]:
        """One open, one `pread` per range."""
        fd = self._open(key)
        try:
            return [_pread(fd, key, r) for r in ranges]
        finally:
            os.close(fd)

    def _open(self, key: str) -> int:
        try:
            return os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectMissing(f"{key} is not stored") from None

    def put(self, key: str, source: Path | bytes) -> None:
        self.check_writable()
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temporary_beside(target)
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(source, Path):
                    with open(source, "rb") as src:
                        shutil.copyfileobj(src, out, 1 << 20)
                else:
                    out.write(source)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_path(target.parent)

    def delete(self, key: str) -> None:
        self.check_writable()
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        fsync_path(path.parent)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectMissing(f"{key} is not stored") from None

    def list(self, prefix: str = "") -> Iterator[str]:
        """Walks only the folders the prefix can be in (`objects/1.2/` walks
        `objects/1.2`); temporary files of unfinished puts are not keys."""
        check_prefix(prefix)
        folder = prefix.rpartition("/")[0]
        top = self.root / folder if folder else self.root
        for dirpath, _, files in os.walk(top):
            base = os.path.relpath(dirpath, self.root)
            for name in files:
                if name.startswith(".") and name.endswith(_PARTIAL):
                    continue
                key = name if base == "." else f"{base}/{name}".replace(os.sep, "/")
                if key.startswith(prefix):
                    yield key


def _pread(fd: int, key: str, r: ByteRange) -> bytes:
    """Bytes `r` of open file `fd`; ObjectTruncated when it ends first."""
    if r.start == r.end:  # nothing to read, but it must lie within the object
        if r.start and r.start > os.fstat(fd).st_size:
            raise ObjectTruncated(f"{key} ends before byte {r.start}")
        return b""
    data = os.pread(fd, r.end - r.start, r.start)
    while len(data) < r.end - r.start:  # short reads happen only at the end of a regular file
        more = os.pread(fd, r.end - r.start - len(data), r.start + len(data))
        if not more:
            raise ObjectTruncated(f"{key} ends at byte {r.start + len(data)}, before byte {r.end}")
        data += more
    return data
