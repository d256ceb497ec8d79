"""The `Archive` interface and its embedded backend: a folder plus SQLite.

The pipeline, the server and `verify` see only `Archive`: place an object,
read it (whole, a byte range, several ranges in one call, as a seekable file
for pydicom, or as a local file for the DICOM reader, which maps it), list
the stored objects, and query the catalog
(`archive.index`, transcode.catalog). Nothing outside a backend opens an
object by its path.
`SessionArchive` holds what every backend shares (the identity check and
write sessions); the object-store backend, over any `transcode.stores`
Store, is `transcode.archive.objects.StoreArchive`; its catalog SQLite or
PostgreSQL.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import sqlite3
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

from transcode.archive import identity
from transcode.archive.identity import ArchiveMismatch, Identity, read_marker, write_marker
from transcode.archive.layout import Layout
from transcode.catalog import open_catalog
from transcode.catalog.base import ArchiveBusy, Catalog
from transcode.catalog.sqlite import take_lock
from transcode.dicom.write import fsync_path
from transcode.stores.base import ByteRange

log = logging.getLogger(__name__)
#: How much `Archive.open` reads at a time: a DICOM header in one request, mostly.
OPEN_BUFFER = 1 << 18


__all__ = ["Archive", "ArchiveBusy", "ArchiveReadOnly", "FolderArchive", "SessionArchive", "clear_staging",
           "take_lock"]


class ArchiveReadOnly(RuntimeError):
    """The archive was opened read-only (a read-only folder, `verify`)."""


class Archive(ABC):
    """Stored objects by archive-relative path, plus the catalog."""

    #: The catalog (transcode.catalog): the name the pipeline has always used.
    index: Catalog
    #: The local folder holding the archive, if it has one (never ingested from).
    root: Path | None = None
    #: Opened for reading only: nothing may be placed or indexed.
    read_only: bool = False
    #: Why the index is not this archive's (opened unchecked: `verify`); None when it is.
    mismatch: str | None = None
    #: Reads wait on the network (`Store.remote`): the server makes them
    #: on its thread pool, never on its event loop.
    remote: bool = False

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

    def read_ranges(self, relative: str, ranges: Sequence[ByteRange]) -> list[bytearray]:
        """Several byte ranges of one object in one call (zarr's
        `get_partial_values`): a region of a tiled frame is a few runs of
        tile-parts, and a backend reads them with one request each where the
        default reads them one `read_into` at a time. Raises EOFError where
        the object ends before a range does."""
        out = [bytearray(r.end - r.start) for r in ranges]
        for r, buf in zip(ranges, out, strict=True):
            self.read_into(relative, r.start, memoryview(buf))
        return out

    @abstractmethod
    def exists(self, relative: str) -> bool: ...

    @abstractmethod
    def size(self, relative: str) -> int: ...

    @abstractmethod
    def list(self, prefix: str) -> Iterator[str]:
        """The archive-relative paths of the stored objects under folder
        `prefix` (`objects/`, `conflicts/`), in no particular order."""

    def version(self, relative: str) -> tuple[object, ...]:
        """What changes when the object is replaced (the server proves a
        whole object once per version); FileNotFoundError when missing."""
        return (self.size(relative),)

    def open(self, relative: str) -> BinaryIO:
        """The object as a seekable binary file, for a reader that walks it
        (pydicom reading a header): reads go through `read`, buffered, so a
        reader that stops early fetches only what it read.
        FileNotFoundError when the object is missing."""
        return io.BufferedReader(_ObjectFile(self, relative), buffer_size=OPEN_BUFFER)

    @contextmanager
    def local(self, relative: str) -> Iterator[Path]:
        """The object as a local file for the length of the block, for a
        reader that maps it (the DICOM reader): a temporary copy here,
        removed on leaving (`TMPDIR` says where); the file itself where the
        backend has one. FileNotFoundError when the object is missing."""
        with self.open(relative) as source, tempfile.NamedTemporaryFile(suffix=".dcm") as copy:
            shutil.copyfileobj(source, copy, OPEN_BUFFER)
            copy.flush()
            yield Path(copy.name)

    @abstractmethod
    def staging(self) -> Path:
        """A local folder where workers write objects before `place`."""

    def remote_staging(self, run: str) -> str | None:
        """For workers that may run on other machines: a URL under which
        they put the objects of run `run` themselves (`objects.put_staged`),
        or None where they write into `staging()` (a folder archive, or a
        store on this machine)."""
        return None

    def discard(self, staged: Path) -> None:
        """Drop a staged object that is not placed (a duplicate)."""
        staged.unlink()

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except Exception as late:  # noqa: BLE001 - the first error is the one to report (a full disk fails both)
            log.warning("closing the archive after an error failed too: %s", late)


class SessionArchive(Archive):
    """An archive with an identity marker and write sessions (identity.py):
    what every backend shares; a backend says where its marker lives
    (`_write_marker`) and how it checks its index against it (`_check`)."""

    identity: Identity | None
    mismatch: str | None
    #: Whether this session has placed an object (and so raised the generation).
    _writing: bool = False

    @abstractmethod
    def _check(self) -> tuple[Identity | None, str | None]:
        """(identity, None) for an index that describes this archive; (None, why) otherwise."""

    @abstractmethod
    def _write_marker(self, identity: Identity) -> None:
        """Record a write session's generation in the marker (not durably: identity.py)."""

    def _open_index(self, where: str | os.PathLike[str], *, check: bool, exclusive: bool) -> None:
        """Open the catalog at `where` (a folder holding index.sqlite, or a
        PostgreSQL URL: `open_catalog`), take the writer lock when
        `exclusive` (ArchiveBusy), and check the catalog against the marker;
        ArchiveMismatch (with `check`), and the lock released, when it is not
        this archive's."""
        try:
            self.index = open_catalog(where, read_only=self.read_only)
            if exclusive:
                self.index.lock()
            self.identity, self.mismatch = self._check()
            if self.mismatch and check:
                raise ArchiveMismatch(self.mismatch)
        except BaseException:
            self._release()
            raise

    def _start_writing(self) -> None:
        """Called before each object is placed: the first raises the generation."""
        if not self._writing:
            self._next_generation()
            self._writing = True

    def _next_generation(self) -> None:
        """Start or end a write session that places objects: the index
        first, then the marker (see identity.py for why that order)."""
        assert self.identity is not None
        self.identity = self.identity.next()
        self.index.set_identity(self.identity)
        self._write_marker(self.identity)

    def _release(self) -> None:
        if getattr(self, "index", None) is not None:
            self.index.close()  # and its writer lock

    def close(self) -> None:
        try:
            if self._writing:
                self._writing = False
                self._next_generation()  # the write session ends
        finally:
            self._release()


class FolderArchive(SessionArchive):
    """The embedded default: objects in a folder tree, index in SQLite.

    Opening checks that the index is this archive's (identity.py) and raises
    ArchiveMismatch when it is not (with `check=False`, `verify` reads on and
    reports `mismatch`). A new folder becomes an empty archive with a new
    identity; an archive from before identities existed is adopted when its
    index lists every stored file.

    `exclusive=True` (ingest, STOW-RS) is a write session: it takes a lock
    so two writers cannot interleave and clears what a killed run left in
    staging (never placed, so nothing refers to it). The generation is
    raised before the first object is placed and again at `close`; a
    session that places nothing (a finished ingest rerun, a duplicate sent
    again) leaves it as it was. `read_only=True` (verify,
    a read-only folder) creates and writes nothing, not even the schema;
    `place` then raises ArchiveReadOnly.
    """

    def __init__(self, root: str | os.PathLike[str], *, exclusive: bool = False, read_only: bool = False,
                 check: bool = True) -> None:
        if exclusive and (read_only or not check):
            raise ValueError("a write session is neither read-only nor unchecked")
        self.layout = Layout(Path(root))
        self.root = self.layout.root
        self.read_only = read_only
        self._syncer: ThreadPoolExecutor | None = None
        if not read_only:
            self.layout.create()
        self._open_index(self.layout.root, check=check, exclusive=exclusive)
        if exclusive:
            clear_staging(self.layout.staging)
        self._unsynced: list[Path] = []
        self._folders: set[Path] = set()
        self._syncer = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fsync")

    def _check(self) -> tuple[Identity | None, str | None]:
        """(identity, None) for an index that describes this archive, after
        creating or adopting the identity where it may write; (None, why) for
        one that does not. Nothing is written for a mismatch."""
        layout = self.layout
        try:
            marker = read_marker(layout.marker)
        except ArchiveMismatch as exc:
            return None, f"{exc}: {identity.REBUILD.format(root=layout.root)}"
        if marker is not None and not layout.index.is_file() and not self.read_only:
            return None, identity.check(marker, None, layout.root)  # not even an empty file is created
        try:
            indexed = self.index.identity()
        except sqlite3.DatabaseError as exc:
            return None, (f"{layout.index} is not a readable SQLite index ({exc}): "
                          f"{identity.REBUILD.format(root=layout.root)}")
        if marker is not None:
            why = identity.check(marker, indexed, layout.root)
            if why is None and not self.read_only:
                self.index.create()
                if indexed != marker:  # a crash between the index and the marker: repair the marker
                    write_marker(layout.marker, indexed)  # type: ignore[arg-type]
            return (None if why else indexed), why
        stored = (len(layout.stored(layout.objects)), len(layout.stored(layout.conflicts)))
        why = identity.counts_match(stored, self.index.listed(), layout.root)
        if why is not None or self.read_only:
            return indexed, why
        # A new archive, or one made before identities: adopted, index first.
        self.index.create()
        adopted = indexed or Identity.new()
        if indexed is None:
            self.index.set_identity(adopted)
        write_marker(layout.marker, adopted)
        log.info("%s: archive identity %s recorded in %s", layout.root, adopted.archive, layout.marker)
        return adopted, None

    def _write_marker(self, identity: Identity) -> None:
        write_marker(self.layout.marker, identity, durable=False)  # why not durable: identity.py

    def _release(self) -> None:
        if self._syncer is not None:
            self._syncer.shutdown()
            self._syncer = None
        super()._release()

    def place(self, staged: Path, relative: str) -> None:
        if self.read_only:
            raise ArchiveReadOnly(f"{self.root} is open read-only")
        self._start_writing()
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
            _pread_into(fd, relative, start, view)
        finally:
            os.close(fd)

    def read_ranges(self, relative: str, ranges: Sequence[ByteRange]) -> list[bytearray]:
        """One open, one `preadv` per range."""
        out = [bytearray(r.end - r.start) for r in ranges]
        fd = os.open(self.layout.resolve(relative), os.O_RDONLY | os.O_CLOEXEC)
        try:
            for r, buf in zip(ranges, out, strict=True):
                _pread_into(fd, relative, r.start, memoryview(buf))
        finally:
            os.close(fd)
        return out

    def exists(self, relative: str) -> bool:
        return self.layout.resolve(relative).is_file()

    def size(self, relative: str) -> int:
        return self.layout.resolve(relative).stat().st_size

    def list(self, prefix: str) -> Iterator[str]:
        for path in self.layout.stored(self.layout.resolve(prefix)):
            yield self.layout.relative(path)

    def version(self, relative: str) -> tuple[object, ...]:
        """The file's inode, size, mtime and ctime."""
        st = os.stat(self.layout.resolve(relative))
        return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    def open(self, relative: str) -> BinaryIO:
        return open(self.layout.resolve(relative), "rb")

    @contextmanager
    def local(self, relative: str) -> Iterator[Path]:
        """The stored file itself (FileNotFoundError when missing)."""
        path = self.layout.resolve(relative)
        if not path.is_file():
            raise FileNotFoundError(f"{relative} is missing")
        yield path

    def staging(self) -> Path:
        return self.layout.staging


def clear_staging(folder: Path) -> None:
    """Remove what killed runs left in a staging folder (never placed, so
    nothing refers to it): for a write session, which holds the lock."""
    for leftover in folder.iterdir():
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink()


class _ObjectFile(io.RawIOBase):
    """A stored object as a raw, seekable file over `Archive.read`."""

    def __init__(self, archive: Archive, relative: str) -> None:
        super().__init__()
        self._archive, self._relative = archive, relative
        self._size = archive.size(relative)
        self._position = 0

    @property
    def name(self) -> str:
        """The archive-relative path (what pydicom records as the file name)."""
        return self._relative

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        end = min(self._size, self._position + len(buffer))
        if end <= self._position:
            return 0
        data = self._archive.read(self._relative, self._position, end)
        memoryview(buffer).cast("B")[:len(data)] = data
        self._position += len(data)
        return len(data)


def _pread_into(fd: int, relative: str, start: int, view: memoryview) -> None:
    """Fill `view` from byte `start` of open file `fd` (EOFError if it ends first)."""
    while view:
        n = os.preadv(fd, [view], start)
        if not n:
            raise EOFError(f"{relative} ends before byte {start + len(view)}")
        view, start = view[n:], start + n
