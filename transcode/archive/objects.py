"""An `Archive` over any `Store`, and `open_archive` for archive URLs.

`StoreArchive` keeps the objects in a store (S3, memory, a folder) under
the same keys `FolderArchive` uses as paths (`objects/STUDY/SERIES/SOP.dcm`,
`conflicts/...`), and its catalog where the caller says: a local folder
(SQLite index, the workers' staging folder and the writer lock's file) or a
PostgreSQL URL (catalog and writer lock in the database; staging in a local
working folder, `--work-dir` or a per-user one under the temporary folder, named
after the catalog so two archives never share one). `root` is None:
nothing may open an object by path.

Workers that may run on other machines (a Dask cluster) put what they
staged into a remote store themselves, under `staging/RUN/` keys
(`remote_staging`, `put_staged`): no key there is ever an object, and
`place` moves one to its object key with a server-side copy, which shows
the whole object or nothing, so a half-written object never looks
finished. A write session deletes what killed runs left under `staging/`.

The identity rules of `identity.py` hold with the marker stored as the
object `archive.json` beside the objects: an index that does not describe
the store (another archive's, an older copy, a fresh catalog over a store
with objects) is refused with ArchiveMismatch. `transcode verify
--rebuild-index` does not yet read a store (README, "Object storage").
"""

from __future__ import annotations

import functools
import getpass
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from transcode.archive import identity
from transcode.archive.identity import ArchiveMismatch, Identity, decode_marker, encode_marker
from transcode.archive.store import (
    Archive,
    ArchiveReadOnly,
    FolderArchive,
    SessionArchive,
    clear_staging,
)
from transcode.catalog import is_url
from transcode.stores.base import ByteRange, ObjectMissing, ObjectTruncated, Store

log = logging.getLogger(__name__)

MARKER = "archive.json"
#: The key prefix of objects that workers staged in the store.
STAGED = "staging/"
#: Puts in flight at once from `place` (uploads side by side: an object
#: store answers each after a round trip or more).
PUTS = 8


class ArchiveURLError(ValueError):
    """An archive URL that names no archive this build can open."""


class StoreArchive(SessionArchive):
    """Objects in `store`; the catalog in the local folder `catalog` or the
    PostgreSQL database at the URL `catalog`. `work_dir`: this node's local
    working folder (default: the catalog folder, or `default_work_dir` for a
    PostgreSQL catalog), whose `staging/` holds the workers' staged objects
    (emptied by every write session: nothing else may live there) and where
    the doors keep their spools, uploads, API keys and audit trail.

    `exclusive`, `read_only` and `check` mean what they mean for
    `FolderArchive`. `name` is how messages name the store (its URL)."""

    def __init__(self, store: Store, catalog: str | os.PathLike[str], *, name: str, exclusive: bool = False,
                 read_only: bool = False, check: bool = True, work_dir: str | os.PathLike[str] | None = None) -> None:
        if exclusive and (read_only or not check):
            raise ValueError("a write session is neither read-only nor unchecked")
        self.store = store
        self.name = name
        #: The catalog as given: a local folder (absolute: a staged file's path is absolute, a staged key
        #: never), or a PostgreSQL URL.
        self.catalog: str | Path = str(catalog) if is_url(catalog) else Path(catalog).absolute()
        self.read_only = read_only or not store.supports_writes
        self.remote = store.remote
        self._uploads = ThreadPoolExecutor(max_workers=PUTS, thread_name_prefix="store-put")
        self._puts: dict[str, Future[None]] = {}  # key -> its put, until a flush or a read waited for it
        if not is_url(catalog) and not self.read_only:
            self.catalog.mkdir(parents=True, exist_ok=True)
        self._staging = local_folder(catalog, work_dir) / "staging"
        if not self.read_only:
            self._staging.mkdir(parents=True, exist_ok=True)
        self._open_index(catalog, check=check, exclusive=exclusive)
        if exclusive:
            clear_staging(self._staging)
            if self.store.remote:
                for key in list(self.store.list(STAGED)):
                    self.store.delete(key)

    def _check(self) -> tuple[Identity | None, str | None]:
        """As `FolderArchive._check`, with the marker in the store."""
        indexed = self.index.identity()
        try:
            marker: Identity | None = decode_marker(self.store.get(MARKER), f"{self.name}/{MARKER}")
        except ObjectMissing:
            marker = None
        except ArchiveMismatch as exc:
            return None, f"{exc}: {identity.REBUILD.format(root=self.name)}"
        if marker is None:
            stored = (sum(1 for _ in self.store.list("objects/")), sum(1 for _ in self.store.list("conflicts/")))
            why = identity.counts_match(stored, self.index.listed(), self.name)
            if why is not None or self.read_only:
                return indexed, why
            self.index.create()
            marker = indexed or Identity.new()
            if indexed is None:
                self.index.set_identity(marker)
            self.store.put(MARKER, encode_marker(marker))
            log.info("%s: archive identity %s recorded in %s", self.name, marker.archive, MARKER)
            return marker, None
        why = identity.check(marker, indexed, self.name)
        if why is None and not self.read_only:
            self.index.create()
            if indexed is not None and indexed != marker:  # a crash between the index and the marker
                self.store.put(MARKER, encode_marker(indexed))
        return (None if why else indexed), why

    def _write_marker(self, identity: Identity) -> None:
        self.store.put(MARKER, encode_marker(identity))

    def place(self, staged: Path, relative: str) -> None:
        """Start `store.put` (atomic, and durable when it returns) on one of
        `PUTS` threads, the staged file removed after it: a batch of files
        is uploaded side by side, not one round trip after another. An
        earlier put of the same key still running is waited for first, so
        the last place wins, as with renames. Called by the writer's thread only."""
        if self.read_only:
            raise ArchiveReadOnly(f"{self.name} is open read-only")
        self._start_writing()
        self._landed(relative)
        self._puts[relative] = self._uploads.submit(self._put, staged, relative)

    def _put(self, staged: Path, relative: str) -> None:
        if staged.is_absolute():  # a file in the local staging folder
            self.store.put(relative, staged)
            staged.unlink()
        else:  # a key a worker put under STAGED
            self.store.rename(staged.as_posix(), relative)

    def remote_staging(self, run: str) -> str | None:
        """`NAME/staging/RUN` where the store is remote (S3), else None."""
        return f"{self.name.rstrip('/')}/{STAGED}{run}" if self.store.remote else None

    def discard(self, staged: Path) -> None:
        if staged.is_absolute():
            staged.unlink()
        else:
            self.store.delete(staged.as_posix())

    def flush(self) -> None:
        """Wait for every put started by `place`; the first that failed
        raises its error (StoreUnavailable), after all have ended."""
        puts, self._puts = self._puts, {}
        errors = [error for error in (put.exception() for put in puts.values()) if error is not None]
        if errors:
            raise errors[0]

    def _landed(self, relative: str) -> None:
        """Wait for a put of `relative` still running (its error raises)."""
        put = self._puts.pop(relative, None)
        if put is not None:
            put.result()

    def read(self, relative: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of an object, fewer where it ends first (as a
        file read); FileNotFoundError (ObjectMissing) when it is missing."""
        self._landed(relative)
        if start == 0 and end is None:
            return self.store.get(relative)
        if end is not None:  # the common case, one request: a range inside the object
            try:
                return self.store.get_range(relative, ByteRange(start, max(start, end)))
            except ObjectTruncated:
                pass
        size = self.store.size(relative)
        end = size if end is None else min(end, size)
        return self.store.get_range(relative, ByteRange(start, end)) if start < end else b""

    def read_into(self, relative: str, start: int, view: memoryview) -> None:
        """EOFError (ObjectTruncated) when the object ends before `view` is full."""
        self._landed(relative)
        view[:] = self.store.get_range(relative, ByteRange(start, start + len(view)))

    def read_ranges(self, relative: str, ranges: Sequence[ByteRange]) -> list[bytearray]:
        """Several ranges in one `get_ranges` call (one request per range, or
        fewer, where the store coalesces them)."""
        self._landed(relative)
        return [bytearray(data) for data in self.store.get_ranges(relative, ranges)]

    def exists(self, relative: str) -> bool:
        self._landed(relative)
        return self.store.exists(relative)

    def list(self, prefix: str) -> Iterator[str]:
        return self.store.list(prefix)

    def size(self, relative: str) -> int:
        self._landed(relative)
        return self.store.size(relative)

    def staging(self) -> Path:
        return self._staging

    def close(self) -> None:
        """Let the puts started end (an interrupted run's too: a put half
        done is invisible, one done is kept), then end the session."""
        try:
            self._uploads.shutdown(wait=True)
            super().close()
        finally:
            self.store.close()


def local_folder(catalog: str | os.PathLike[str], work_dir: str | os.PathLike[str] | None) -> Path:
    """The local working folder of a store archive (absolute: a staged
    file's path is absolute, a staged key never): `work_dir`, else the
    catalog folder, else `default_work_dir` of a PostgreSQL catalog."""
    if work_dir is not None:
        return Path(work_dir).absolute()
    return default_work_dir(str(catalog)) if is_url(catalog) else Path(catalog).absolute()


def default_work_dir(catalog_url: str) -> Path:
    """The working folder of an archive whose catalog is in PostgreSQL:
    local (workers stage there), per user (another user's files are not
    ours to clear) and per catalog (a write session clears its staging,
    which must not be another archive's)."""
    key = hashlib.blake2b(catalog_url.encode(), digest_size=8).hexdigest()
    return Path(tempfile.gettempdir()) / f"transcode-{getpass.getuser()}" / f"archive-{key}"


@dataclass(frozen=True)
class ArchiveAddress:
    """Where an archive is: what `open_archive` takes (a folder, or an
    `s3://` URL and its catalog folder), for a door that opens its own
    sessions (the ingest service, a receiver, a migration). `store`: an open
    store to use instead of reaching the URL's (a memory store in tests).

    `local` is the local folder where the doors keep what is not an object
    (uploads, spools, queues): the archive folder itself, or a store
    archive's working folder (`local_folder`: `work_dir`, the catalog
    folder, or `default_work_dir` beside a PostgreSQL catalog)."""

    url: str
    catalog: str | None = None
    store: Store | None = field(default=None, compare=False, repr=False)
    work_dir: str | None = None

    @classmethod
    def of(cls, where: ArchiveAddress | str | os.PathLike[str], catalog: str | os.PathLike[str] | None = None,
           work_dir: str | os.PathLike[str] | None = None) -> ArchiveAddress:
        """`where` as an address (a folder path or URL, with `catalog` and `work_dir`)."""
        if isinstance(where, ArchiveAddress):
            return where
        return cls(os.fspath(where), None if catalog is None else os.fspath(catalog),
                   work_dir=None if work_dir is None else os.fspath(work_dir))

    @property
    def local(self) -> Path:
        if self.catalog is not None:
            return local_folder(self.catalog, self.work_dir)
        return Path(urlsplit(self.url).path if self.url.startswith("file://") else self.url)

    def check(self) -> None:
        """ArchiveURLError where `open` would refuse the URL and catalog as such."""
        _scheme(self.url, self.catalog)

    def open(self, **options: Any) -> Archive:
        """A new session (`open_archive`'s options: exclusive, read_only, check)."""
        if self.store is not None:
            return StoreArchive(self.store, self.catalog or self.local, name=self.url, work_dir=self.work_dir,
                                **options)
        return open_archive(self.url, catalog=self.catalog, work_dir=self.work_dir, **options)

    def __str__(self) -> str:
        return self.url


def _scheme(url: str, catalog: str | os.PathLike[str] | None) -> str:
    """"" for a folder, "s3" for an S3 URL with a catalog; ArchiveURLError
    for a URL of another scheme, an S3 URL without a catalog or a folder with one."""
    scheme = urlsplit(url).scheme if "://" in url else ""  # a folder may have a colon in its name
    if scheme in ("", "file"):
        if catalog is not None:
            raise ArchiveURLError("--catalog is for an object-store archive; a folder archive keeps its index inside")
        return ""
    if scheme != "s3":
        raise ArchiveURLError(f"{url}: an archive is a folder or an s3://bucket/prefix URL")
    if catalog is None:
        raise ArchiveURLError(f"{url}: an S3 archive needs --catalog FOLDER (or postgresql://...) for its catalog")
    return scheme


def address_of(archive: Archive) -> ArchiveAddress:
    """How to open `archive` again: another session over the same folder or store."""
    if isinstance(archive, StoreArchive):
        return ArchiveAddress(archive.name, os.fspath(archive.catalog), store=archive.store,
                              work_dir=os.fspath(archive.staging().parent))
    if archive.root is None:
        raise TypeError(f"{archive!r} has no address")
    return ArchiveAddress(os.fspath(archive.root))


def put_staged(staging: str, local: Path) -> str:
    """In a worker: put the finished file `local` under `staging` (a
    `remote_staging` URL), remove it, and return its key, which the
    coordinator's `place` takes as the staged path."""
    base, _, run = staging.partition(f"/{STAGED}")
    key = f"{STAGED}{run}/{local.name}"
    try:
        _staging_store(base).put(key, local)
    finally:  # stored or not, the temporary file goes
        local.unlink(missing_ok=True)
    return key


@functools.cache
def _staging_store(url: str) -> Store:
    """One client per worker process and archive (its connection pool)."""
    from transcode.stores.s3 import S3Store

    return S3Store.from_url(url)


def open_archive(url: str | os.PathLike[str], *, catalog: str | os.PathLike[str] | None = None,
                 exclusive: bool = False, read_only: bool = False, check: bool = True,
                 work_dir: str | os.PathLike[str] | None = None) -> Archive:
    """The archive at `url`: a folder path (objects and SQLite inside it, as
    always) or `s3://BUCKET/PREFIX` (objects in S3, reached through the AWS
    environment variables; its catalog at `catalog`, required: a local
    folder, or a `postgresql://` URL; `work_dir` the local working folder,
    `StoreArchive`). ArchiveURLError for a URL of another scheme, an S3 URL without
    a catalog or a folder with one."""
    text = os.fspath(url)
    if _scheme(text, catalog) == "":
        return FolderArchive(ArchiveAddress(text).local, exclusive=exclusive, read_only=read_only, check=check)
    from transcode.stores.s3 import S3Store

    try:
        store = S3Store.from_url(text, read_only=read_only)
    except ValueError as exc:
        raise ArchiveURLError(str(exc)) from None
    return StoreArchive(store, catalog, name=text, exclusive=exclusive,
                        read_only=read_only, check=check, work_dir=work_dir)
