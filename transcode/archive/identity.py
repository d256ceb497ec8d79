"""Which archive an index describes: a marker beside the objects.

The stored objects are the truth and the index is a cache of them
(DESIGN.md, decision 12). An index that does not describe the objects beside
it (emptied, replaced by another archive's, restored from an older copy)
must never be written into: a writer trusting an empty index would place a
re-sent instance over the archived one. So the archive folder holds
`archive.json`, `{"archive": UUID, "generation": N}`, written atomically
(temporary file, fsync, rename, fsync of the folder), and the index holds the
same pair in its `meta` table.

The generation counts write sessions. Every session that stores objects
(an ingest, one STOW-RS request) raises it before its first object and
again when it ends, each time in the index first and in the marker second; so an index copied while a session
ran is behind once it ends. A crash between the two leaves the index one
ahead of the marker, which is accepted (and the marker repaired): the index
was the one being written. An index behind the marker is a copy from before
later sessions wrote objects it does not list; an index of another UUID, or
with no identity, is not this archive's. Both are refused; `transcode
verify --rebuild-index` rebuilds the index from the objects.

A session updates the marker in place (128 bytes, one sector) without
fsync: written durably (temporary file, fsync, rename, fsync of the folder)
each update cost 12 ms here, twice on each STOW-RS request that stores. A
power cut may then undo the marker's last update, which leaves the index
level or one ahead, accepted (the index's own last commits may be lost too:
objects without rows, which a rerun indexes, as before markers); a torn
write leaves a marker that cannot be read, refused. Creating, adopting and
rebuilding write it durably.

An archive made before markers existed (objects, an index, no marker) is
adopted, the marker written, when its index lists as many instances and
conflict paths as there are files under objects/ and conflicts/; refused
otherwise.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from transcode.dicom.write import fsync_path

REBUILD = "transcode verify --archive {root} --rebuild-index"


class ArchiveMismatch(RuntimeError):
    """The index does not describe the objects stored beside it; nothing
    may be written until it is rebuilt. The message says what was found and
    the command that rebuilds it."""


@dataclass(frozen=True, slots=True)
class Identity:
    """An archive's UUID and the generation of its last write session."""

    archive: str
    generation: int

    @classmethod
    def new(cls) -> Identity:
        return cls(str(uuid.uuid4()), 1)

    def next(self) -> Identity:
        return Identity(self.archive, self.generation + 1)


def read_marker(path: Path) -> Identity | None:
    """The identity in the marker file, None when there is none; raises
    ArchiveMismatch for a marker that cannot be read (never guessed)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ArchiveMismatch(f"{path} cannot be read ({exc}): it says which archive the index belongs to") from exc
    return decode_marker(data, str(path))


def decode_marker(data: bytes, where: str) -> Identity:
    """The identity in a marker's bytes (read from `where`); ArchiveMismatch
    for bytes that are not one."""
    try:
        fields = json.loads(data)
        return Identity(str(fields["archive"]), int(fields["generation"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ArchiveMismatch(f"{where} cannot be read ({exc}): it says which archive the index belongs to") from exc


#: The marker's size: its JSON padded with spaces, so that a session's
#: update is one write of the same length in place.
MARKER_BYTES = 128


def encode_marker(identity: Identity) -> bytes:
    """The marker's bytes: its JSON padded to MARKER_BYTES."""
    text = json.dumps({"archive": identity.archive, "generation": identity.generation})
    return text.ljust(MARKER_BYTES - 1).encode() + b"\n"


def write_marker(path: Path, identity: Identity, *, durable: bool = True) -> None:
    """Write the marker. `durable`: a new file, fsynced, renamed over the old
    one, the folder fsynced. Otherwise (a write session's update, see above)
    the same number of bytes written over the old marker in place: one
    sector, no rename, no fsync."""
    data = encode_marker(identity)
    if not durable and path.is_file():
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def check(marker: Identity | None, index: Identity | None, root: Path | str) -> str | None:
    """Why an index with identity `index` does not describe the archive whose
    marker holds `marker` (None: it does). Only for a present marker; see
    `counts_match` for archives without one."""
    if marker is None:
        return None
    rebuild = REBUILD.format(root=root)
    if index is None:
        return (f"the index of {root} is missing, empty or not this archive's (it has no archive identity) "
                f"while archive.json says this folder is an archive: {rebuild}")
    if index.archive != marker.archive:
        return f"the index of {root} belongs to another archive ({index.archive}, not {marker.archive}): {rebuild}"
    if index.generation < marker.generation:
        return (f"the index of {root} is older than its objects (generation {index.generation}, archive.json says "
                f"{marker.generation}): objects stored since are not in it: {rebuild}")
    if index.generation > marker.generation + 1:
        return (f"the index of {root} is ahead of archive.json (generation {index.generation}, archive.json says "
                f"{marker.generation}), which no crash leaves behind: {rebuild}")
    return None


def counts_match(stored: tuple[int, int], indexed: tuple[int, int], root: Path | str) -> str | None:
    """For an archive without a marker: why its index (instances, conflicts
    rows) does not list the stored files (objects/, conflicts/), or None."""
    if stored == indexed:
        return None
    return (f"{root} has {stored[0]} objects and {stored[1]} conflicting copies but its index lists "
            f"{indexed[0]} and {indexed[1]}, and there is no archive.json to tell which is right: "
            f"{REBUILD.format(root=root)}")
