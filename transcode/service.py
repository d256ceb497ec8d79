"""One ingest service behind every door: STOW-RS, the C-STORE receiver,
a migration's retrieved instances, the Orthanc hook.

Each door hands the service finished files (spooled where the door chose)
and gets back one ingest entry per file, with the same outcomes, reasons
and ledger rows as `transcode ingest`, because it is `transcode ingest`:
`pipeline.Ingest` over a pool of worker processes that stays up between
calls (starting interpreters costs about half a second, a CT instance a few
milliseconds). Calls are serialised in this process and take the archive's
ingest lock, so a door and a running `transcode ingest` never write at once.
Nothing is acknowledged before `store` returns, and it returns only once the
objects and their index rows are durable.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transcode.archive import FolderArchive
from transcode.codecs.htj2k import EncodeSettings
from transcode.pipeline import WorkerPool, ingest
from transcode.policy import OnConflict
from transcode.verify import CrossCheck


class ServiceBusy(RuntimeError):
    """Another call of this service held it for longer than the caller waits."""


class IngestService:
    """Ingest into the archive at `root` with `workers` persistent worker
    processes (started by the first call). Options are `transcode ingest`'s."""

    def __init__(
        self,
        root: Path,
        *,
        workers: int = 2,
        settings: EncodeSettings | None = None,
        crosscheck: CrossCheck | str = CrossCheck.SAMPLE,
        on_conflict: OnConflict | str = OnConflict.KEEP,
    ) -> None:
        self.root = Path(root)
        self.settings = settings
        self.crosscheck = CrossCheck(crosscheck)
        self.on_conflict = OnConflict(on_conflict)
        self._pool = WorkerPool(workers)
        self._lock = threading.Lock()

    def store(self, files: Sequence[Path | str], *, wait: float = 600.0) -> list[dict[str, Any]]:
        """Ingest `files` (new paths: the ledger skips a path, size and mtime
        it holds) and return their entries, in the order given, once they
        are durable. Raises `ServiceBusy` after `wait` seconds behind
        other calls, `ArchiveBusy` while another process ingests into the
        archive, `ArchiveMismatch` when its index is not the archive's."""
        if not files:
            return []
        if not self._lock.acquire(timeout=wait):
            raise ServiceBusy(f"another ingest into {self.root} has run for over {wait:.0f} s")
        try:
            with FolderArchive(self.root, exclusive=True) as archive:
                report = ingest(
                    [str(path) for path in files], archive, pool=self._pool, settings=self.settings,
                    crosscheck=self.crosscheck, on_conflict=self.on_conflict,
                )
        finally:
            self._lock.release()
        by_path = {entry["source_path"]: entry for entry in report.entries}
        missing = [str(path) for path in files if str(Path(path).absolute()) not in by_path]
        if missing:  # the ledger skipped them: a door must spool each instance under a new name
            raise ValueError(f"already ingested under the same path, size and mtime: {', '.join(missing)}")
        return [by_path[str(Path(path).absolute())] for path in files]

    def close(self) -> None:
        """Stop the worker processes (after the calls under way)."""
        self._pool.close()
