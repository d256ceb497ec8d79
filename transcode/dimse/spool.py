"""The receiver's spool: each received data set as a Part 10 file, durable
before it is ingested, so that a kill at any moment loses nothing that was
acknowledged and leaves nothing that a restart cannot finish.

A file is written under a temporary name, fsynced, renamed to its final
name and the folder fsynced: a kill mid-write leaves a `.part` file, which
was never acknowledged and is removed; a final file is whole, and the next
start ingests it (`leftovers`). Names are new for every file (the ingest
ledger skips a path, size and mtime it holds), including leftovers, which
are renamed before they are ingested again: one ingested already then
ends `duplicate`, and the archive holds it once.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from transcode.dicom.write import fsync_path

_PART = ".part"


class Spool:
    """Durable files in `folder` (created)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, data: bytes) -> Path:
        """Write `data` to a new file, durably, and return its path. Raises
        OSError (ENOSPC when the disk is full) and leaves nothing behind."""
        path = self.folder / f"{uuid.uuid4().hex}.dcm"
        part = path.with_suffix(_PART)
        try:
            with open(part, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.rename(part, path)
            fsync_path(self.folder)
        except BaseException:
            part.unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            raise
        return path

    def set_aside(self, path: Path) -> Path:
        """Move a file whose instance could not be archived out of the spool
        into `failed/` beside it, where no restart ingests it again: under
        `--ack spooled` its sender was told it was stored, so its bytes
        stay for the operator."""
        folder = self.folder.parent / "failed"
        folder.mkdir(exist_ok=True)
        target = folder / path.name
        os.rename(path, target)
        fsync_path(folder)
        return target

    def remove(self, path: Path) -> None:
        """Forget a file once its instance is settled (archived or refused).
        Not fsynced: a file that comes back after a crash is ingested again
        and ends as a duplicate."""
        path.unlink(missing_ok=True)

    def leftovers(self) -> list[Path]:
        """Whole files a previous run left (killed before they were settled),
        each renamed to a new name; partial ones are removed."""
        found = []
        for path in sorted(self.folder.iterdir()):
            if path.suffix == _PART:
                path.unlink(missing_ok=True)
            elif path.is_file():
                renamed = self.folder / f"{uuid.uuid4().hex}.dcm"
                os.rename(path, renamed)
                found.append(renamed)
        if found:
            fsync_path(self.folder)
        return found
