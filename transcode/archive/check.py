"""`transcode verify`: re-read every stored object and prove the index true.

First, that the index is this archive's (identity.py); if it is not, that is
the one problem reported. Then for every instance: the object exists, has
the recorded size and digest; for transcoded ones, the frames rows computed
again from the object (describe.py: each codestream's byte range and map)
equal the index's, and the decoded frames hash to the recorded pixel
digest. Also reported: files in the archive that no row refers to, and
staged files a killed run left behind. Nothing is written: the archive may
be opened read-only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from transcode.archive.describe import frame_rows
from transcode.archive.store import FolderArchive
from transcode.catalog.base import InstanceRow
from transcode.codecs.codestream import CodestreamError
from transcode.dicom.read import open_instance
from transcode.digest import file_digest, frame_digests_agree
from transcode.policy import Stop


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    what: str


def _check_frames(archive: FolderArchive, row: InstanceRow) -> str | None:
    try:
        with open_instance(archive.layout.resolve(row.path)) as instance:
            stored, pixel_digest = frame_rows(instance)
    except (Stop, CodestreamError) as exc:
        return f"frames cannot be read: {exc}"
    indexed = archive.index.frames(row.sop_uid)
    if len(stored) != len(indexed):
        return f"{len(stored)} frames stored, {len(indexed)} in the index"
    for mine, theirs in zip(stored, indexed, strict=True):
        if replace(mine, digest=None) != replace(theirs, digest=None) or \
                not frame_digests_agree(mine.digest or "", theirs.digest):
            return f"frame {mine.number}: byte range or codestream differs from its index row"
    if pixel_digest != row.pixel_digest:
        return "decoded pixels do not match the recorded pixel digest"
    return None


def verify_archive(archive: FolderArchive, progress: Callable[[int, int], None] | None = None) -> list[Problem]:
    """Every problem found; an empty list means the archive is whole."""
    if archive.mismatch:
        return [Problem(archive.layout.index.name, archive.mismatch)]
    problems: list[Problem] = []
    rows = list(archive.index.instances())
    known = {row.path for row in rows}
    known |= archive.index.conflict_paths()
    for number, row in enumerate(rows, 1):
        if not archive.exists(row.path):
            problems.append(Problem(row.path, "missing: indexed but not on disk"))
        elif archive.size(row.path) != row.size:
            problems.append(Problem(row.path, f"size {archive.size(row.path)} != recorded {row.size}"))
        elif file_digest(archive.layout.resolve(row.path)) != row.object_digest:
            problems.append(Problem(row.path, "object digest does not match: the file changed"))
        elif row.outcome == "transcoded" and (why := _check_frames(archive, row)):
            problems.append(Problem(row.path, why))
        if progress:
            progress(number, len(rows))
    layout = archive.layout
    for path in [*layout.stored(layout.objects), *layout.stored(layout.conflicts)]:
        relative = str(path.relative_to(layout.root))
        if relative not in known:
            problems.append(Problem(relative, "not in the index (an interrupted run placed it; rerun the ingest)"))
    for path in layout.stored(layout.staging):
        problems.append(Problem(str(path.relative_to(layout.root)), "left in staging by an interrupted run"))
    return problems
