"""`transcode verify`: re-read every stored object and prove the index true.

First, that the index is this archive's (identity.py); if it is not, that is
the one problem reported. Then for every instance: the object exists, has
the recorded size and digest; for transcoded ones, the bytes at each frames
row's offset and length match the digest recorded for that frame (what the
server checks on every read: an index whose frame map disagrees with its
object is found here, not by a client), the frames rows computed again from
the object (describe.py: each codestream's byte range and map) equal the
index's, and the decoded frames hash to the recorded pixel digest. Also
reported: objects that no row refers to (`Archive.list`), and staged files
a killed run left behind. Nothing is written: the archive may be opened
read-only.

One code path for every backend: objects are listed and read through
`Archive` (a store's object is fetched once, into a temporary file, and
everything about it is checked from there: `Archive.local`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from transcode.archive.describe import frame_rows
from transcode.archive.store import Archive
from transcode.catalog.base import FrameRow, InstanceRow
from transcode.codecs.codestream import CodestreamError, CodestreamIndex
from transcode.dicom.read import open_instance
from transcode.digest import file_digest, frame_digest, frame_digests_agree
from transcode.policy import Stop


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    what: str


def _frame_map(path: Path, indexed: list[FrameRow]) -> str | None:
    """Why the bytes at the indexed frames' offsets and lengths in the
    object at `path` are not the frames whose digests the index records."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        for frame in indexed:
            if frame.offset + frame.length > size:
                return f"frame {frame.number}: its recorded byte range ends after the object"
            if frame.digest is None:  # indexed before frames had digests: the rows below are compared instead
                continue
            data = os.pread(f.fileno(), frame.length, frame.offset)
            try:
                computed = frame_digest(data, CodestreamIndex.from_dict(frame.codestream))
            except (KeyError, TypeError, ValueError) as exc:
                return f"frame {frame.number}: its recorded codestream map cannot be read ({exc})"
            if not frame_digests_agree(computed, frame.digest):
                return (f"frame {frame.number}: the bytes at its recorded offset and length do not match its "
                        "recorded digest (the index's frame map disagrees with the object)")
    return None


def _check_frames(archive: Archive, row: InstanceRow, path: Path) -> str | None:
    indexed = archive.index.frames(row.sop_uid)
    if why := _frame_map(path, indexed):
        return why
    try:
        with open_instance(path) as instance:
            stored, pixel_digest = frame_rows(instance)
    except (Stop, CodestreamError) as exc:
        return f"frames cannot be read: {exc}"
    if len(stored) != len(indexed):
        return f"{len(stored)} frames stored, {len(indexed)} in the index"
    for mine, theirs in zip(stored, indexed, strict=True):
        if replace(mine, digest=None) != replace(theirs, digest=None) or \
                not frame_digests_agree(mine.digest or "", theirs.digest):
            return f"frame {mine.number}: byte range or codestream differs from its index row"
    if pixel_digest != row.pixel_digest:
        return "decoded pixels do not match the recorded pixel digest"
    return None


def _check_object(archive: Archive, row: InstanceRow) -> str | None:
    """Why the object of `row` is not what the index records, or None."""
    try:
        size = archive.size(row.path)
        if size != row.size:
            return f"size {size} != recorded {row.size}"
        with archive.local(row.path) as path:
            if file_digest(path) != row.object_digest:
                return "object digest does not match: the object changed"
            return _check_frames(archive, row, path) if row.outcome == "transcoded" else None
    except FileNotFoundError:
        return "missing: indexed but not stored"


def verify_archive(archive: Archive, progress: Callable[[int, int], None] | None = None) -> list[Problem]:
    """Every problem found; an empty list means the archive is whole."""
    if archive.mismatch:
        where = archive.index.path.name if archive.index.path is not None else archive.index.name
        return [Problem(where, archive.mismatch)]
    problems: list[Problem] = []
    rows = list(archive.index.instances())
    known = {row.path for row in rows}
    known |= archive.index.conflict_paths()
    for number, row in enumerate(rows, 1):
        if why := _check_object(archive, row):
            problems.append(Problem(row.path, why))
        if progress:
            progress(number, len(rows))
    for relative in sorted({*archive.list("objects/"), *archive.list("conflicts/")} - known):
        problems.append(Problem(relative, "not in the index (an interrupted run placed it; rerun the ingest)"))
    staging = archive.staging()
    for path in sorted(path for path in staging.rglob("*") if path.is_file()) if staging.is_dir() else ():
        problems.append(Problem(f"staging/{path.relative_to(staging)}", "left in staging by an interrupted run"))
    return problems
