"""What an ingest says about each source file, and its running totals.

An `Entry` is made by the worker process that transcodes a file, crosses
into the coordinator (pickled), which settles its outcome, indexes it and
hands it on: to the ledger (`Entry.ledger`), the report file and summary
(`Entry.to_json`), STOW-RS, the C-STORE receiver and the migration. One
type for all of them, so that a field has one name and one meaning.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from transcode.catalog.base import LEDGER_COLUMNS, FrameRow


class IngestOutcome(StrEnum):
    TRANSCODED = "transcoded"
    KEPT = "kept"
    DUPLICATE = "duplicate"
    #: became the instance in place of an archived copy, which is kept beside it (`policy.resend`)
    REPLACED = "replaced"
    CONFLICT = "conflict"
    FAILED = "failed"


#: Outcomes after which a migration may proceed without a person looking.
CLEAN = frozenset({IngestOutcome.TRANSCODED, IngestOutcome.KEPT, IngestOutcome.DUPLICATE, IngestOutcome.REPLACED})


def path_text(path: str | os.PathLike[str]) -> str:
    """A file path as text that UTF-8 stores and prints: bytes of a name that
    are not UTF-8 (Latin-1 or Shift-JIS names from a legacy file system,
    which Python holds as lone surrogates) become \\xNN escapes; any other
    path is unchanged. SQLite, JSON reports and terminals refuse lone
    surrogates, so a ledger row, a report line or a printed path is this text."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    return text


@dataclass(frozen=True, slots=True)
class Staged:
    """An object a worker wrote into the staging folder, and what the index
    needs of it (serialised in the worker, in parallel, not in the one
    coordinator): where it is, its transfer syntax, its DICOM JSON (whole,
    and the study and series attributes), and its frames rows."""

    path: str
    transfer_syntax: str
    dicom_json: str
    study_json: str
    series_json: str
    frames: tuple[FrameRow, ...] = ()


@dataclass(slots=True)
class Entry:
    """One source file's outcome (`IngestOutcome`, a `policy.Reason` value
    and a sentence) with its identity, sizes and digests. `staged` is set
    from the worker until the coordinator places or drops the object."""

    source_path: str
    outcome: IngestOutcome = IngestOutcome.FAILED
    reason: str | None = None
    detail: str | None = None
    source_size: int = 0
    source_mtime_ns: int = 0
    source_digest: str | None = None
    sop_uid: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    pixel_digest: str | None = None
    object_digest: str | None = None
    frames: int | None = None
    file_meta_constructed: bool = False
    seconds: float | None = None
    staged: Staged | None = None

    def __post_init__(self) -> None:
        self.source_path = path_text(self.source_path)  # the file itself is opened by its own path

    def ledger(self) -> dict[str, Any]:
        """The ledger row's values, by column."""
        return {column: getattr(self, column) for column in LEDGER_COLUMNS}

    def to_json(self) -> dict[str, Any]:
        """The entry as a report lists it (everything but the staged object)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "staged"}


@dataclass
class IngestReport:
    """Every source file's outcome in this run, and running totals.

    `entries` holds every file's entry unless the run passes them on as they
    come instead (`Ingest(on_entry=..., keep_entries=False)`, as the command
    line does): at about 1 KB an entry, a million-file migration would hold
    a gigabyte. The totals, and the entries that need a person (failed,
    conflict), are kept either way.
    """

    entries: list[Entry] = field(default_factory=list)
    skipped: int = 0
    seconds: float = 0.0
    #: Failed and conflicting files' entries.
    attention: list[Entry] = field(default_factory=list, init=False)
    frames: int = field(default=0, init=False)
    _counts: Counter[str] = field(default_factory=Counter, init=False, repr=False)
    _bytes_in: Counter[str] = field(default_factory=Counter, init=False, repr=False)
    _bytes_out: Counter[str] = field(default_factory=Counter, init=False, repr=False)

    def add(self, entry: Entry, *, keep: bool = True) -> None:
        """Count one settled file (and keep its entry with `keep`)."""
        outcome = entry.outcome
        self.frames += entry.frames or 0
        self._counts[outcome] += 1
        self._bytes_in[outcome] += entry.bytes_in or 0
        self._bytes_out[outcome] += entry.bytes_out or 0
        if keep:
            self.entries.append(entry)
        if outcome not in CLEAN:
            self.attention.append(entry)

    @property
    def files(self) -> int:
        """Files settled so far."""
        return self._counts.total()

    def counts(self) -> Counter[str]:
        return Counter(self._counts)

    @property
    def clean(self) -> bool:
        return not self.attention

    def bytes(self, outcome: str | None = IngestOutcome.TRANSCODED) -> tuple[int, int]:
        """Bytes in and out of the files with `outcome` (None: all files)."""
        if outcome is None:
            return sum(self._bytes_in.values()), sum(self._bytes_out.values())
        return self._bytes_in[outcome], self._bytes_out[outcome]
