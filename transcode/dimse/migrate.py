"""`transcode migrate`: pull studies from a legacy PACS into the archive.

The PACS is asked (C-FIND, Study Root, STUDY level) for the studies that
match the filters, with their Number of Study Related Instances; then, one
study at a time, for its instances (SERIES, then IMAGE level: the SOP
Instance UIDs and SOP classes it holds). Each study is retrieved with C-GET,
series by series, the instances arriving on the same association; or, where the PACS refuses
C-GET (or `retrieve="move"`), with C-MOVE to a Storage SCP of our own that
runs for the migration. Every instance received is written to the spool
(`ARCHIVE/spool/migrate/STUDY/`, or under the catalog folder of an object-store archive) and fsynced before it is acknowledged,
then the study's files go to the one ingest service (`transcode.service`),
which archives them exactly as `transcode ingest` would.

The study's state is recorded in the index's `migration` table (keyed by the
PACS's AE title and the Study Instance UID): pending (found), retrieving
(started: a run killed here leaves it so, and the next run retrieves it
again), done (every instance the PACS listed is archived, and at least as
many as it counted), incomplete (some missing: named in the report), failed
(not retrieved at all: the reason). A rerun retrieves every study not done,
and never one that is done. A kill at any moment loses nothing: spooled
files of an unfinished study are discarded by the next run, which
retrieves that study again; instances archived already end `duplicate`.

C-GET needs a storage presentation context for each SOP class it will
send, at most 127 beside the C-GET one, and the PACS accepts one transfer
syntax per context. So each series is retrieved on its own association,
where each SOP class the listing found in it gets one context per transfer
syntax: the PACS sends each instance as it holds it, without transcoding
(Orthanc 1.10 cannot transcode J2K to Explicit VR Little Endian in C-GET,
and fails the sub-operation). With more classes in a series than fit, each
gets one context with every syntax; where the PACS listed no instances, the
whole study is asked for with pynetdicom's 120 common storage classes.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, _config, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.transport import ThreadedAssociationServer

from transcode.archive import Archive
from transcode.archive.objects import ArchiveAddress
from transcode.archive.store import take_lock
from transcode.dicom.write import copy_atomically, fsync_path, temporary_beside
from transcode.dimse.scu import MAX_CONTEXTS, MAXIMUM_PDU, TRANSFER_SYNTAXES, RemoteAE, no_delay
from transcode.entries import Entry, IngestReport
from transcode.service import IngestService

log = logging.getLogger(__name__)

SUCCESS, OUT_OF_RESOURCES, PROCESSING_FAILURE = 0x0000, 0xA700, 0x0110
_PENDING = {0xFF00, 0xFF01}


class State(StrEnum):
    PENDING = "pending"
    RETRIEVING = "retrieving"
    DONE = "done"
    INCOMPLETE = "incomplete"
    FAILED = "failed"


class Retrieve(StrEnum):
    """How studies are retrieved: C-GET, falling back to C-MOVE where the
    PACS refuses C-GET (auto); or only one of them."""

    AUTO = "auto"
    GET = "get"
    MOVE = "move"


class MigrationError(RuntimeError):
    """The PACS cannot be queried: no association, or C-FIND failed."""


class RetrieveError(RuntimeError):
    """A study could not be retrieved (the reason); the migration goes on."""


class NoAnswer(RetrieveError):
    """A C-GET or C-MOVE got no answer at all (aborted, or timed out)."""


class GetRefused(RetrieveError):
    """The PACS accepts no C-GET (Study Root) presentation context."""


@dataclass(frozen=True)
class Filters:
    """Which studies: these Study Instance UIDs (any when empty), with a
    Study Date on or after `since` (YYYYMMDD), with one of `modalities` in
    the study (any when empty)."""

    studies: tuple[str, ...] = ()
    since: str | None = None
    modalities: tuple[str, ...] = ()


@dataclass(frozen=True)
class FoundStudy:
    """A study as the PACS describes it (STUDY-level C-FIND)."""

    uid: str
    expected: int | None  # Number of Study Related Instances, where the PACS says
    patient_id: str = ""
    date: str = ""
    modalities: tuple[str, ...] = ()


@dataclass
class StudyResult:
    """What became of one study in this run."""

    study_uid: str
    state: State
    expected: int | None = None
    received: int = 0
    archived: int = 0
    failed: int = 0  # failed sub-operations, as the PACS counted them
    warning: int = 0
    missing: list[str] = field(default_factory=list)  # SOP Instance UIDs listed by the PACS, not archived
    method: str | None = None  # get, move; None: not retrieved in this run
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "state": self.state.value}


@dataclass
class MigrationReport:
    """Every study's result, and the ingest totals of the instances retrieved."""

    studies: list[StudyResult] = field(default_factory=list)
    ingest: IngestReport = field(default_factory=IngestReport)

    def counts(self) -> Counter[str]:
        return Counter(study.state.value for study in self.studies)

    @property
    def clean(self) -> bool:
        return all(study.state is State.DONE for study in self.studies) and self.ingest.clean


@dataclass
class _SubOperations:
    completed: int = 0
    failed: int = 0
    warning: int = 0
    status: int = SUCCESS


class Migration:
    """A migration from the PACS `source` into the archive at `archive`
    (an `ArchiveAddress`, or a folder path; the spool is in its local
    folder), through `service`. We call as `ae_title`; for C-MOVE our Storage SCP
    listens on `move_host`:`move_port` (the PACS must know it under
    `ae_title`). `rate` caps studies started per minute. `on_entry(entry)`
    gets each instance's ingest entry (with its `study_uid`);
    `progress(report, done, total)` is `Ingest`'s callback, over instances
    (the total is the PACS's count; None where it does not count every
    study's instances)."""

    def __init__(
        self,
        archive: ArchiveAddress | str | os.PathLike[str],
        source: RemoteAE,
        service: IngestService,
        *,
        ae_title: str = "TRANSCODE",
        retrieve: Retrieve | str = Retrieve.AUTO,
        move_host: str = "127.0.0.1",
        move_port: int | None = None,
        rate: float | None = None,
        timeout: float = 60.0,
        on_entry: Callable[[Entry], None] | None = None,
        progress: Callable[[IngestReport, int, int | None], None] | None = None,
    ) -> None:
        self.archive = ArchiveAddress.of(archive)
        self.source = source
        self.service = service
        self.ae_title = ae_title
        self.retrieve = Retrieve(retrieve)
        self.move_address = (move_host, move_port) if move_port is not None else None
        self.interval = 60.0 / rate if rate else 0.0
        self.timeout = timeout
        self.on_entry = on_entry
        self.progress = progress
        self.spool = self.archive.local / "spool" / "migrate"
        self._scp: ThreadedAssociationServer | None = None
        self._move_folder: Path | None = None  # where our SCP spools the study being moved

    # -- querying ------------------------------------------------------------

    def _ae(self) -> AE:
        ae = AE(self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.maximum_pdu_size = MAXIMUM_PDU
        return ae

    def _associate(self, ae: AE, **options: Any) -> Association:
        assoc = ae.associate(self.source.host, self.source.port, ae_title=self.source.ae_title, **options)
        if not assoc.is_established:
            raise MigrationError(f"{self.source}: association {'rejected' if assoc.is_rejected else 'failed'}")
        no_delay(assoc)
        return assoc

    def _find(self, query: Dataset) -> Iterator[Dataset]:
        """C-FIND `query` (Study Root) and yield the matches; MigrationError
        when the PACS answers a failure or the connection is lost."""
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = self._associate(ae)
        try:
            for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
                if "Status" not in status:
                    raise MigrationError(f"{self.source}: C-FIND got no answer (timed out or aborted)")
                if status.Status in _PENDING and identifier is not None:
                    yield identifier
                elif status.Status != SUCCESS:
                    raise MigrationError(f"{self.source}: C-FIND failed with status 0x{status.Status:04X} "
                                         f"{status.get('ErrorComment', '')}".rstrip())
        finally:
            assoc.release()

    def find(self, filters: Filters) -> list[FoundStudy]:
        """The studies the PACS holds that match `filters`, in study UID order."""
        found: dict[str, FoundStudy] = {}
        for study in filters.studies or ("",):
            for modality in filters.modalities or ("",):
                query = Dataset()
                query.QueryRetrieveLevel = "STUDY"
                query.StudyInstanceUID = study
                query.StudyDate = f"{filters.since}-" if filters.since else ""
                query.ModalitiesInStudy = modality
                query.PatientID = ""
                query.NumberOfStudyRelatedInstances = ""
                for match in self._find(query):
                    uid = str(match.get("StudyInstanceUID", ""))
                    if not uid:
                        continue
                    count = match.get("NumberOfStudyRelatedInstances")
                    modalities = match.get("ModalitiesInStudy") or ()
                    found[uid] = FoundStudy(
                        uid, int(count) if count not in (None, "") else None, str(match.get("PatientID", "")),
                        str(match.get("StudyDate", "")),
                        tuple(modalities) if not isinstance(modalities, str) else (modalities,))
        return [found[uid] for uid in sorted(found)]

    def instances(self, study: str) -> dict[str, tuple[str, str]]:
        """SOP Instance UID -> (Series Instance UID, SOP Class UID) of every
        instance the PACS lists in `study` (SERIES, then IMAGE level: a
        hierarchical query)."""
        listed: dict[str, tuple[str, str]] = {}
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = study
        query.SeriesInstanceUID = ""
        series = [str(match.SeriesInstanceUID) for match in self._find(query) if match.get("SeriesInstanceUID")]
        for uid in series:
            query = Dataset()
            query.QueryRetrieveLevel = "IMAGE"
            query.StudyInstanceUID = study
            query.SeriesInstanceUID = uid
            query.SOPInstanceUID = ""
            query.SOPClassUID = ""
            for match in self._find(query):
                if match.get("SOPInstanceUID"):
                    listed[str(match.SOPInstanceUID)] = (uid, str(match.get("SOPClassUID", "")))
        return listed

    # -- the run ---------------------------------------------------------------

    def run(self, filters: Filters) -> MigrationReport:
        """Migrate every matching study not done in an earlier run. Raises
        MigrationError when the PACS cannot be queried, ArchiveBusy when
        another migration runs into this archive."""
        self.spool.mkdir(parents=True, exist_ok=True)
        lock = take_lock(self.spool / "lock")  # one migration per archive: the spool is its own
        try:
            for leftover in self.spool.iterdir():  # a killed run's unfinished studies: retrieved again
                if leftover.is_dir():
                    shutil.rmtree(leftover)
            with self.archive.open() as archive:
                return self._run(archive, filters)
        finally:
            if self._scp is not None:
                self._scp.shutdown()
                self._scp = None
            os.close(lock)

    def _run(self, archive: Archive, filters: Filters) -> MigrationReport:
        index, source = archive.index, self.source.ae_title
        report = MigrationReport()
        studies = self.find(filters)
        recorded = index.migration(source)
        todo = []
        for study in studies:
            row = recorded.get(study.uid)
            if row is None:
                index.set_migration(source, study.uid, State.PENDING, expected=study.expected)
            if row is not None and row.state == State.DONE:  # never retrieved twice
                report.studies.append(StudyResult(study.uid, State.DONE, row.expected, archived=row.archived or 0,
                                                  detail="done in an earlier run"))
            else:
                todo.append(study)
        total = None if any(s.expected is None for s in todo) else sum(s.expected or 0 for s in todo)
        began = time.perf_counter()
        if self.progress:
            self.progress(report.ingest, 0, total)
        started = None
        for study in todo:
            if started is not None and self.interval:
                time.sleep(max(0.0, started + self.interval - time.monotonic()))
            started = time.monotonic()
            result = self._study(archive, study, report.ingest, total)
            index.set_migration(source, study.uid, result.state, expected=result.expected, received=result.received,
                                archived=result.archived, failed=result.failed, warning=result.warning,
                                detail=result.detail)
            log.info("%s: %s (%d of %s instances archived)", study.uid, result.state.value, result.archived,
                     result.expected)
            report.studies.append(result)
        report.ingest.seconds = time.perf_counter() - began
        return report

    def _study(self, archive: Archive, study: FoundStudy, ingest: IngestReport, total: int | None) -> StudyResult:
        archive.index.set_migration(self.source.ae_title, study.uid, State.RETRIEVING, expected=study.expected)
        result = StudyResult(study.uid, State.FAILED, study.expected)
        folder = self.spool / study.uid
        folder.mkdir()
        try:
            listed = self.instances(study.uid)
            result.method, sub = self._retrieve(study.uid, listed, folder)
            fsync_path(folder)  # every file in it was fsynced as it came
            files = sorted(folder.iterdir())
            result.received, result.failed, result.warning = len(files), sub.failed, sub.warning
            for entry in self.service.store(files):
                entry.study_uid = entry.study_uid or study.uid  # one that failed, by the study it came in
                ingest.add(entry, keep=False)
                if self.on_entry:
                    self.on_entry(entry)
                if self.progress:
                    self.progress(ingest, ingest.files, total)
        except (RetrieveError, MigrationError) as exc:
            result.detail = str(exc)
            return result
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        archived = archive.index.study_instances(study.uid)
        result.archived = len(archived)
        result.missing = sorted(set(listed) - archived)
        expected = max(study.expected or 0, len(listed))
        notes = []
        if result.missing or result.archived < expected:
            result.state = State.INCOMPLETE
            notes.append(f"{expected - result.archived if result.archived < expected else len(result.missing)} "
                         f"of {expected} instances not archived")
        else:
            result.state = State.DONE
        if sub.failed or sub.warning:
            notes.append(f"the PACS reports {sub.failed} failed and {sub.warning} warning sub-operations "
                         f"(status 0x{sub.status:04X})")
        if not ingest.clean:
            notes.append("some instances need a person (failed or conflicting: see the report)")
        result.detail = "; ".join(notes) or None
        return result

    def _retrieve(self, study: str, listed: dict[str, tuple[str, str]], folder: Path) -> tuple[str, _SubOperations]:
        if self.retrieve is not Retrieve.MOVE:
            try:
                return "get", self._get_series(study, listed, folder)
            except GetRefused:
                if self.retrieve is Retrieve.GET:
                    raise
                log.info("%s refuses C-GET: retrieving with C-MOVE", self.source)
                self.retrieve = Retrieve.MOVE  # for the studies that follow too
        return "move", self._move(study, folder)

    def _get_series(self, study: str, listed: dict[str, tuple[str, str]], folder: Path) -> _SubOperations:
        """C-GET series by series (a series holds one or few SOP classes, so
        each class gets a context per transfer syntax); the whole study at
        once where the PACS listed no instances."""
        by_series: dict[str, set[str]] = {}
        for series, sop_class in listed.values():
            by_series.setdefault(series, set()).add(sop_class)
        if not by_series:
            return self._get(_retrieve_query(study), set(), folder)
        total = _SubOperations()
        for series, classes in sorted(by_series.items()):
            sub = self._get(_retrieve_query(study, series), classes - {""}, folder)
            total.completed += sub.completed
            total.failed += sub.failed
            total.warning += sub.warning
            total.status = sub.status if sub.status != SUCCESS else total.status
        return total

    def _get(self, query: Dataset, classes: set[str], folder: Path) -> _SubOperations:
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        room = MAX_CONTEXTS - 1
        if not classes:
            classes = {str(cx.abstract_syntax) for cx in StoragePresentationContexts}
        ordered = sorted(classes)
        if len(ordered) * len(TRANSFER_SYNTAXES) <= room:
            for sop_class in ordered:  # one syntax per context: the PACS sends what it holds
                for syntax in TRANSFER_SYNTAXES:
                    ae.add_requested_context(sop_class, syntax)
        else:
            for sop_class in ordered[:room]:
                ae.add_requested_context(sop_class, list(TRANSFER_SYNTAXES))
        roles = [build_role(sop_class, scp_role=True) for sop_class in ordered[:room]]
        assoc = self._associate(ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, self._on_store, [folder])])
        try:
            if not any(cx.abstract_syntax == StudyRootQueryRetrieveInformationModelGet
                       for cx in assoc.accepted_contexts):
                raise GetRefused(f"{self.source} accepts no C-GET")
            try:
                return self._wait(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet), "C-GET")
            except NoAnswer as exc:  # Orthanc, for one, aborts a C-GET it does not allow
                if not any(folder.iterdir()):
                    raise GetRefused(f"{self.source} aborted the C-GET before sending anything") from exc
                raise
        finally:
            assoc.release()

    def _move(self, study: str, folder: Path) -> _SubOperations:
        if self.move_address is None:
            raise RetrieveError(f"{self.source} refuses C-GET; C-MOVE needs our Storage SCP: give --move-port "
                                f"(the PACS must know {self.ae_title} at that port)")
        self._listen()
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = self._associate(ae)
        self._move_folder = folder
        try:
            if not assoc.accepted_contexts:
                raise RetrieveError(f"{self.source} accepts no C-MOVE either")
            return self._wait(assoc.send_c_move(_retrieve_query(study), self.ae_title,
                                                StudyRootQueryRetrieveInformationModelMove), "C-MOVE")
        finally:
            self._move_folder = None
            assoc.release()

    def _listen(self) -> None:
        """Start our Storage SCP for C-MOVE (once per migration): every
        storage SOP class, every transfer syntax, only the source calling."""
        if self._scp is not None:
            return
        ae = self._ae()
        ae.require_calling_aet = [self.source.ae_title]
        for cx in StoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, list(TRANSFER_SYNTAXES))
        assert self.move_address is not None
        handlers = [(evt.EVT_C_STORE, self._on_moved), (evt.EVT_ESTABLISHED, lambda event: no_delay(event.assoc))]
        self._scp = ae.start_server(self.move_address, block=False, evt_handlers=handlers)

    def _wait(self, responses: Iterator[tuple[Dataset, Dataset | None]], what: str) -> _SubOperations:
        """Follow a C-GET/C-MOVE to its final response: its sub-operation counts."""
        final = None
        for status, _ in responses:
            if "Status" not in status:
                error = RetrieveError if final else NoAnswer
                raise error(f"{what} got no final answer from {self.source} (timed out or aborted)")
            final = status
        if final is None:
            raise NoAnswer(f"{what}: no answer from {self.source}")
        code = int(final.Status)
        sub = _SubOperations(int(final.get("NumberOfCompletedSuboperations") or 0),
                             int(final.get("NumberOfFailedSuboperations") or 0),
                             int(final.get("NumberOfWarningSuboperations") or 0), code)
        if code not in (SUCCESS, 0xB000) and not sub.completed:
            raise RetrieveError(f"{what} failed with status 0x{code:04X} {final.get('ErrorComment', '')}".rstrip())
        return sub

    def _on_moved(self, event: evt.Event) -> int:
        folder = self._move_folder
        if folder is None:  # nothing is being moved: a store we did not ask for
            return PROCESSING_FAILURE
        return self._on_store(event, folder)

    def _on_store(self, event: evt.Event, folder: Path) -> int:
        """Spool one received instance, as received, fsynced, before answering success."""
        path = folder / f"{uuid.uuid4().hex}.dcm"
        try:
            if _config.STORE_RECV_CHUNKED_DATASET:  # pynetdicom spooled it already: copy it, durably
                copy_atomically(event.dataset_path, path)
            else:
                fd, tmp = temporary_beside(path)
                try:
                    with os.fdopen(fd, "wb") as out:
                        out.write(event.encoded_dataset())
                        out.flush()
                        os.fsync(out.fileno())
                    os.replace(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)
        except OSError as exc:
            log.error("cannot spool an instance of %s: %s", event.request.AffectedSOPInstanceUID, exc)
            return OUT_OF_RESOURCES if exc.errno in (errno.ENOSPC, errno.EDQUOT) else PROCESSING_FAILURE
        return SUCCESS


def _retrieve_query(study: str, series: str | None = None) -> Dataset:
    """The identifier of a C-GET/C-MOVE of a study, or of one of its series."""
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES" if series else "STUDY"
    query.StudyInstanceUID = study
    if series:
        query.SeriesInstanceUID = series
    return query
