"""`transcode listen`: a DICOM storage receiver (C-ECHO, C-STORE) in front
of the ingest service.

Each association runs on its own thread (pynetdicom). A received data set
is written as sent, with the File Meta of its presentation context and no
re-encoding (`event.encoded_dataset()`), to the spool in the archive's
local folder (the archive folder, or an object-store archive's catalog) and
fsynced there (spool.py); it is then ingested by the one `IngestService`,
and the sender is answered once the service has returned, that is once the
instance is durable in the archive, with the status of its outcome
(`service.storage_status`). The spool file is removed after; one left by a
kill is ingested at the next start. Instances arriving on several
associations while an ingest runs go to the next call together (a group
commit: one archive session, one index transaction for all of them), so
throughput is not one ingest call per instance, without a delay added to a
lone sender.

With `ack=Ack.SPOOLED` (`listen --ack spooled`) a readable instance (one
whose SOP Instance UID pydicom reads) is answered Success as soon as it is
durable in the spool, and ingested behind the answer: the sender's rate is
the spool's, not the transcoder's. The price is in the status: a sender is
no longer told that an instance was kept as is (B000) or conflicted (0111),
and one that then fails to be archived was told Success; its file is moved
to `spool/failed/` (never deleted: the operator has its bytes) and the
ledger says why. At most `backlog` instances wait behind their answers;
beyond that a sender waits for its instance as with `ack=Ack.ARCHIVED`,
which bounds the spool and slows a sender the transcoder cannot keep up
with.

Bounded: at most `max_associations` associations (beyond: A-ASSOCIATE-RJ,
transient, local limit exceeded), each holding at most the instance it is
receiving in memory; the ingest workers bound memory by workers x frame
size. ACSE, DIMSE and network (idle) timeouts are set; TCP_NODELAY too.

After an instance is archived (transcoded, kept, duplicate or replaced) the
`on_archived(entry)` callbacks run with its ingest entry (forwarding plugs
in there); their errors are logged, never answered to the sender.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import queue
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from transcode.archive import ArchiveBusy, ArchiveMismatch
from transcode.archive.objects import ArchiveAddress
from transcode.codecs.htj2k import EncodeSettings
from transcode.dimse.hooks import Hook, StudyTracker
from transcode.dimse.scu import MAXIMUM_PDU, preferred
from transcode.dimse.spool import Spool
from transcode.entries import CLEAN, Entry, IngestOutcome
from transcode.pipeline import SETTLE_BATCH
from transcode.policy import OnConflict
from transcode.security.audit import AuditEvent, AuditLog, Touched
from transcode.service import (
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    SUCCESS,
    IngestService,
    Sent,
    identify,
    storage_status,
)
from transcode.verify import CrossCheck

log = logging.getLogger(__name__)

#: Warning: the data set's SOP Class UID is not the one it was sent under (PS3.4 B.2.3).
DATA_SET_MISMATCH = 0xB007
#: Under --ack spooled, the ingest workers' priority below the receiver's (os.nice steps).
SPOOLED_NICE = 10
#: The Error Comment (0000,0902) is an LO: at most 64 characters.
_COMMENT = 64
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class Ack(StrEnum):
    """When a C-STORE is answered: once archived (with the outcome's
    status), or once durable in the spool (Success for every readable
    instance; see the module's docstring)."""

    ARCHIVED = "archived"
    SPOOLED = "spooled"


@dataclass(frozen=True)
class Peer:
    """An allowed caller: a calling AE title, and the host it must call from (any when None)."""

    ae_title: str
    host: str | None = None

    @classmethod
    def parse(cls, text: str) -> Peer:
        """`AE` or `AE@host` (a host name is resolved now, to its address)."""
        ae_title, _, host = text.partition("@")
        if not ae_title or len(ae_title) > 16:
            raise ValueError(f"{text!r}: a calling AE title is 1 to 16 characters")
        return cls(ae_title, socket.gethostbyname(host) if host else None)

    def allows(self, ae_title: str, address: str) -> bool:
        return ae_title.strip() == self.ae_title and self.host in (None, address)


@dataclass(frozen=True)
class Timeouts:
    """Seconds: association negotiation (ACSE), waiting for a DIMSE message,
    and a connection idle (network) before it is closed."""

    acse: float = 30.0
    dimse: float = 60.0
    network: float = 60.0


class _NoDelayServer(ThreadedAssociationServer):
    """pynetdicom's server with Nagle's algorithm off on each connection
    (pynetdicom leaves it on): a C-STORE response is a small PDU, and
    delaying it for the sender's next one costs tens of milliseconds an
    instance."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        connection, address = super().get_request()
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection, address


class _GroupCommit:
    """One thread that hands the spooled files to the service: whatever
    arrived while the previous call ran goes in the next, up to
    SETTLE_BATCH files."""

    def __init__(self, service: IngestService) -> None:
        self.service = service
        self._queue: queue.Queue[tuple[Path, Future[Entry]] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ingest-commit", daemon=True)
        self._thread.start()

    def submit(self, path: Path) -> Future[Entry]:
        """Queue `path` for the next call; raises RuntimeError once closed."""
        future: Future[Entry] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the receiver is stopping")
            self._queue.put((path, future))
        return future

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            batch = [item]
            stop = False
            while len(batch) < SETTLE_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            try:
                entries = self.service.store([path for path, _ in batch])
            except Exception as exc:  # noqa: BLE001 (any failure: every waiting association answers with it)
                for _, future in batch:
                    future.set_exception(exc)
            else:
                for (_, future), entry in zip(batch, entries, strict=True):
                    future.set_result(entry)
            if stop:
                return

    def close(self) -> None:
        """Finish the files queued, then stop."""
        with self._lock:
            self._closed = True
            self._queue.put(None)
        self._thread.join()


class Receiver:
    """A Storage SCP on `host`:`port` as `ae_title`, ingesting into the
    archive at `archive` (an `ArchiveAddress`, or a folder path; the spool
    is in its local folder: the archive folder, or an object-store
    archive's catalog). `accept_from` lists the callers allowed (all when
    empty); `study_hooks` fire once a study has been quiet `study_idle`
    seconds; `on_archived` callbacks get the entry of every archived
    instance; `ssl_context`: TLS on every association (a server context,
    with a CA and CERT_REQUIRED for mutual TLS); `audit`: the trail that
    records every C-STORE and every rejected caller (closed by `stop`);
    `ack` and `backlog`: when a C-STORE is answered (module docstring).
    The called AE title must be `ae_title`. `start` drains the spool, then listens; `stop` ends both."""

    def __init__(
        self,
        archive: ArchiveAddress | str | os.PathLike[str],
        *,
        ae_title: str = "TRANSCODE",
        host: str = "127.0.0.1",
        port: int = 11112,
        accept_from: Sequence[Peer] = (),
        max_associations: int = 10,
        timeouts: Timeouts = Timeouts(),
        study_idle: float = 60.0,
        study_hooks: Sequence[Hook] = (),
        on_archived: Sequence[Callable[[Entry], None]] = (),
        workers: int = 2,
        settings: EncodeSettings | None = None,
        crosscheck: CrossCheck | str = CrossCheck.SAMPLE,
        on_conflict: OnConflict | str = OnConflict.KEEP,
        ssl_context: ssl.SSLContext | None = None,
        audit: AuditLog | None = None,
        ack: Ack | str = Ack.ARCHIVED,
        backlog: int = 256,
    ) -> None:
        self.archive = ArchiveAddress.of(archive)
        self.address = (host, port)
        self.accept_from = list(accept_from)
        self.on_archived = list(on_archived)
        self.spool = Spool(self.archive.local / "spool" / "incoming")
        self.ack = Ack(ack)
        # Answering first: under --ack spooled the workers transcode with the CPU the senders leave.
        self.service = IngestService(self.archive, workers=workers, settings=settings, crosscheck=crosscheck,
                                     on_conflict=on_conflict, nice=SPOOLED_NICE if self.ack is Ack.SPOOLED else 0)
        self.studies = StudyTracker(study_idle, list(study_hooks), archive=str(self.archive),
                                    state=self.archive.local / "spool" / "studies.json")
        self._commit = _GroupCommit(self.service)
        self.ae = AE(ae_title=ae_title)
        self.ae.maximum_associations = max_associations
        self.ae.acse_timeout, self.ae.dimse_timeout = timeouts.acse, timeouts.dimse
        self.ae.network_timeout = timeouts.network
        self.ae.require_called_aet = True  # an association addressed to another AE title is rejected
        self.ae.maximum_pdu_size = MAXIMUM_PDU
        self.ae.add_supported_context(Verification)
        self.ssl_context, self.audit = ssl_context, audit
        self._behind = threading.BoundedSemaphore(backlog)  # instances answered before they are archived
        self._server: Any = None
        self._unrestricted = _config.UNRESTRICTED_STORAGE_SERVICE

    def start(self) -> None:
        """Ingest what the spool holds from a previous run, then listen (in
        background threads). Raises ArchiveMismatch for an index that is not
        the archive's, ArchiveBusy while another process ingests into it,
        OSError when the port cannot be bound."""
        self.archive.open().close()  # a new folder (or store) becomes an empty archive; a mismatch refuses now
        self.drain()
        # Every storage SOP class, known or not, in any transfer syntax the sender
        # proposes (`_on_requested` orders them): what the reader cannot decode is kept as is.
        _config.UNRESTRICTED_STORAGE_SERVICE = True
        handlers = [(evt.EVT_C_ECHO, lambda event: SUCCESS), (evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_REQUESTED, self._on_requested)]
        self._server = self.ae.make_server(self.address, evt_handlers=handlers, server_class=_NoDelayServer,
                                           ssl_context=self.ssl_context)
        threading.Thread(target=self._server.serve_forever, name="storage-scp", daemon=True).start()
        self.ae._servers.append(self._server)  # as `AE.start_server` does: its `shutdown` expects it there
        self.address = self._server.server_address[:2]
        log.info("listening on %s:%d as %s", *self.address, self.ae.ae_title)

    def drain(self) -> list[Entry]:
        """Ingest the spool's leftovers (whole files a killed run had not
        settled) and return their entries."""
        leftovers = self.spool.leftovers()
        entries = []
        for start in range(0, len(leftovers), SETTLE_BATCH):
            chunk = leftovers[start:start + SETTLE_BATCH]
            sent = [identify(path) for path in chunk]
            for path, ids, entry in zip(chunk, sent, self.service.store(chunk), strict=True):
                self._settled(entry, ids, "spool")
                self.spool.remove(path)
                entries.append(entry)
        if leftovers:
            log.info("ingested %d instances left in the spool by the previous run", len(leftovers))
        return entries

    def stop(self) -> None:
        """Stop listening (associations under way are aborted: they were not
        answered, so their senders resend), then the ingest and the hooks."""
        if self._server is not None:
            self._server.shutdown()
            for association in self._server.active_associations:
                association.abort()
            self._server = None
        _config.UNRESTRICTED_STORAGE_SERVICE = self._unrestricted
        self._commit.close()
        self.service.close()
        self.studies.close()
        if self.audit is not None:
            self.audit.close()

    def _on_requested(self, event: Event) -> None:
        """Put each proposed context's transfer syntaxes best first
        (`scu.preferred`: pynetdicom's unrestricted storage service accepts
        the first); reject a caller not in `accept_from` (permanent, calling
        AE title not recognised)."""
        for context in event.assoc.requestor.primitive.presentation_context_definition_list:
            context.transfer_syntax = preferred(context.transfer_syntax)
        if not self.accept_from:
            return
        calling = event.assoc.requestor.primitive.calling_ae_title
        address = event.assoc.requestor.address
        if not any(peer.allows(calling, address) for peer in self.accept_from):
            log.warning("rejected association from %s at %s: not in --accept-from", calling, address)
            self._audit(calling, address, "association", 403, "denied", ())
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)
            event.assoc.kill()  # as pynetdicom's own rejections: the DUL sends the A-ASSOCIATE-RJ, then stops

    def _on_store(self, event: Event) -> Dataset:
        caller = event.assoc.requestor.ae_title.strip()
        try:
            path = self.spool.write(event.encoded_dataset())
        except OSError as exc:
            log.error("cannot spool an instance from %s: %s", caller, exc)
            return _status(OUT_OF_RESOURCES if exc.errno in _DISK_FULL else PROCESSING_FAILURE,
                           f"cannot be stored now: {exc.strerror or exc}")
        sent = identify(path)
        if self.ack is Ack.SPOOLED and sent.sop and self._behind.acquire(blocking=False):
            return self._answer_spooled(event, path, sent, caller)
        try:
            entry = self._commit.submit(path).result()
        except (ArchiveBusy, ArchiveMismatch) as exc:
            return _status(OUT_OF_RESOURCES, f"archive unavailable: {exc}")
        except OSError as exc:
            log.error("cannot archive an instance from %s: %s", caller, exc)
            return _status(OUT_OF_RESOURCES if exc.errno in _DISK_FULL else PROCESSING_FAILURE,
                           f"cannot be archived now: {exc.strerror or exc}")
        except Exception as exc:  # a bug: the sender is told, the receiver goes on
            log.exception("ingest of an instance from %s failed", caller)
            return _status(PROCESSING_FAILURE, f"internal error: {type(exc).__name__}")
        finally:
            self.spool.remove(path)
        self._settled(entry, sent, caller)
        status = storage_status(entry)
        comment = f"{entry.outcome}: {entry.reason or ''}: {entry.detail or ''}"
        return self._answer(event, sent, caller, status, comment, entry.outcome in CLEAN, entry.sop_uid)

    def _answer(self, event: Event, sent: Sent, caller: str, status: int, comment: str, clean: bool,
                sop: str | None) -> Dataset:
        """The C-STORE response with `status` (a warning where the data set's
        SOP Class is not the one it was sent as), audited."""
        if status == SUCCESS and sent.sop_class and sent.sop_class != event.request.AffectedSOPClassUID:
            status = DATA_SET_MISMATCH
            comment = f"stored; its SOP Class UID {sent.sop_class} is not the one it was sent as"
        self._audit(caller, event.assoc.requestor.address, "store", status, "success" if clean else "failure",
                    (Touched(sent.study, sent.series, sent.sop or sop),))
        return _status(status, comment if status != SUCCESS else None)

    def _answer_spooled(self, event: Event, path: Path, sent: Sent, caller: str) -> Dataset:
        """Answer Success now; the instance is archived behind the answer."""
        try:
            future = self._commit.submit(path)
        except RuntimeError:  # stopping: the spool keeps it for the next start
            self._behind.release()
        else:
            future.add_done_callback(functools.partial(self._archived_behind, path, sent, caller))
        return self._answer(event, sent, caller, SUCCESS, "", True, sent.sop)

    def _archived_behind(self, path: Path, sent: Sent, caller: str, future: Future[Entry]) -> None:
        """Settle an instance answered before it was archived (on the commit thread)."""
        try:
            entry = future.result()
        except Exception as exc:  # noqa: BLE001 (the archive is unavailable: the spool keeps it)
            log.error("an instance %s from %s was answered and stays in the spool until the next start: %s",
                      sent.sop, caller, exc)
            return
        finally:
            self._behind.release()
        if entry.outcome == IngestOutcome.FAILED:
            kept = self.spool.set_aside(path)
            log.error("instance %s from %s was answered Success but could not be archived (%s: %s); its bytes are "
                      "in %s", sent.sop, caller, entry.reason, entry.detail, kept)
        else:
            self.spool.remove(path)
        self._settled(entry, sent, caller)

    def _settled(self, entry: Entry, sent: Sent, caller: str) -> None:
        """Count `entry` for its study and hand an archived instance to the callbacks."""
        self.studies.seen(sent.study, sent.series, entry.outcome, caller)
        if entry.outcome in CLEAN:
            for callback in self.on_archived:
                try:
                    callback(entry)
                except Exception:  # a callback's failure is its own (logged), not the sender's
                    log.exception("on_archived callback %r failed for %s", callback, entry.sop_uid)


    def _audit(self, caller: str, address: str, action: str, status: int, outcome: str,
               touched: tuple[Touched, ...]) -> None:
        """Record a C-STORE (`status`: its DIMSE status) or a rejected association (403)."""
        if self.audit is not None:
            method = "C-STORE" if touched else "A-ASSOCIATE"
            self.audit.record(AuditEvent(f"ae:{caller.strip()}", address, action, method,
                                         f"dimse:{self.ae.ae_title}", status, outcome, touched))


def _status(code: int, comment: str | None) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:  # an LO: no backslash (the value separator), the default character repertoire
        ds.ErrorComment = comment.encode("ascii", "replace").decode().replace("\\", "/")[:_COMMENT]
    return ds
