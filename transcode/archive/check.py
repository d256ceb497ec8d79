"""`transcode verify`: re-read every stored object and prove the index true.

For every instance: the object exists, has the recorded size and digest; for
transcoded ones every frame, read at its recorded byte range, is a codestream
matching its recorded index, and the decoded frames hash to the recorded
pixel digest. Also reported: files in the archive that no row refers to, and
staged files a killed run left behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from transcode.archive.store import FolderArchive
from transcode.codecs import codestream, htj2k
from transcode.digest import Digest, file_digest


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    what: str


def _check_frames(archive: FolderArchive, sop: str, relative: str, pixel_digest: str | None) -> str | None:
    digest = Digest()
    for frame in archive.index.frames(sop):
        data = archive.read(relative, frame.offset, frame.offset + frame.length)
        try:
            index = codestream.parse(data)
        except codestream.CodestreamError as exc:
            return f"frame {frame.number}: {exc}"
        if index.to_dict() != frame.codestream:
            return f"frame {frame.number}: codestream differs from its index row"
        digest.update(htj2k.decode(data).data)
    if digest.hexdigest() != pixel_digest:
        return "decoded pixels do not match the recorded pixel digest"
    return None


def verify_archive(archive: FolderArchive, progress: Callable[[int, int], None] | None = None) -> list[Problem]:
    """Every problem found; an empty list means the archive is whole."""
    problems: list[Problem] = []
    rows = list(archive.index.instances())
    known = {row.path for row in rows}
    known |= {path for (path,) in archive.index.db.execute("SELECT path FROM conflicts")}
    for number, row in enumerate(rows, 1):
        if not archive.exists(row.path):
            problems.append(Problem(row.path, "missing: indexed but not on disk"))
        elif archive.size(row.path) != row.size:
            problems.append(Problem(row.path, f"size {archive.size(row.path)} != recorded {row.size}"))
        elif file_digest(archive.layout.resolve(row.path)) != row.object_digest:
            problems.append(Problem(row.path, "object digest does not match: the file changed"))
        elif row.outcome == "transcoded" and (why := _check_frames(archive, row.sop_uid, row.path, row.pixel_digest)):
            problems.append(Problem(row.path, why))
        if progress:
            progress(number, len(rows))
    root = archive.layout.root
    for folder in (archive.layout.objects, archive.layout.conflicts):
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            relative = str(path.relative_to(root))
            if relative not in known:
                problems.append(Problem(relative, "not in the index (an interrupted run placed it; rerun the ingest)"))
    for path in sorted(p for p in archive.layout.staging.rglob("*") if p.is_file()):
        problems.append(Problem(str(path.relative_to(root)), "left in staging by an interrupted run"))
    return problems
