"""The `Archive` interface and its embedded backend: a folder plus SQLite.

The pipeline and the server see only `Archive`: place an object, read it
(whole or a byte range), and query the index. An object-store backend
implements the same four byte operations; the index stays SQLite.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from transcode.archive.index import Index
from transcode.archive.layout import Layout
from transcode.dicom.write import fsync_path


class ArchiveBusy(RuntimeError):
    """Another process is ingesting into this archive."""


class Archive(ABC):
    """Stored objects by archive-relative path, plus the index."""

    index: Index
    #: The local folder holding the archive, if it has one (never ingested from).
    root: Path | None = None

    @abstractmethod
    def place(self, staged: Path, relative: str) -> None:
        """Make the finished file `staged` the object at `relative`
        atomically (a reader sees the old object or the new, never part).
        Durable only after the next `flush`."""

    @abstractmethod
    def flush(self) -> None:
        """Make every `place` so far durable. Index rows pointing at those
        objects are committed only after this returns."""

    @abstractmethod
    def read(self, relative: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of an object."""

    def read_into(self, relative: str, start: int, view: memoryview) -> None:
        """Fill `view` with the object's bytes from `start` (saves a copy
        where the backend can read in place)."""
        view[:] = self.read(relative, start, start + len(view))

    @abstractmethod
    def exists(self, relative: str) -> bool: ...

    @abstractmethod
    def size(self, relative: str) -> int: ...

    @abstractmethod
    def staging(self) -> Path:
        """A local folder where workers write objects before `place`."""

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class FolderArchive(Archive):
    """The embedded default: objects in a folder tree, index in SQLite.

    `exclusive=True` (ingest) takes a lock so two ingests cannot interleave,
    and clears what a killed run left in staging: those files were never
    placed, so nothing refers to them.
    """

    def __init__(self, root: str | os.PathLike[str], *, exclusive: bool = False) -> None:
        self.layout = Layout(Path(root))
        self.root = self.layout.root
        self.layout.create()
        self._lock_fd: int | None = None
        if exclusive:
            self._lock_fd = os.open(self.layout.lock, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                os.close(self._lock_fd)
                raise ArchiveBusy(f"another ingest holds {self.layout.lock}") from exc
            for leftover in self.layout.staging.iterdir():  # what killed runs staged
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink()
        self.index = Index(self.layout.index)
        self._unsynced: list[Path] = []
        self._folders: set[Path] = set()
        self._syncer = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fsync")

    def place(self, staged: Path, relative: str) -> None:
        target = self.layout.resolve(relative)
        if target.parent not in self._folders:  # one mkdir walk per series, not per object
            target.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(target.parent)
        os.replace(staged, target)
        self._unsynced.append(target)

    def flush(self) -> None:
        """fsync the placed files (workers stage them without fsync) all at
        once, so the file system can fold them into one journal commit, then
        each of their folders once."""
        files, self._unsynced = self._unsynced, []
        list(self._syncer.map(fsync_path, files))
        for folder in {path.parent for path in files}:
            fsync_path(folder)

    def read(self, relative: str, start: int = 0, end: int | None = None) -> bytes:
        with open(self.layout.resolve(relative), "rb") as f:
            f.seek(start)
            return f.read(-1 if end is None else max(0, end - start))

    def read_into(self, relative: str, start: int, view: memoryview) -> None:
        # os-level calls, no file object: this runs for every frame the server sends
        fd = os.open(self.layout.resolve(relative), os.O_RDONLY | os.O_CLOEXEC)
        try:
            while view:
                n = os.preadv(fd, [view], start)
                if not n:
                    raise EOFError(f"{relative} ends before byte {start + len(view)}")
                view, start = view[n:], start + n
        finally:
            os.close(fd)

    def exists(self, relative: str) -> bool:
        return self.layout.resolve(relative).is_file()

    def size(self, relative: str) -> int:
        return self.layout.resolve(relative).stat().st_size

    def staging(self) -> Path:
        return self.layout.staging

    def close(self) -> None:
        super().close()
        self._syncer.shutdown()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
