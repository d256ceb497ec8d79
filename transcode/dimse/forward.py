"""Forwarding archived instances to a peer: the receiver as a transcoding
router (`transcode listen --forward AE@host:port`, `--forward-stow URL`).

The receiver calls `Forwarder.on_archived(entry)` once an instance is
durably archived; its SOP Instance UID goes into a persistent queue (SQLite,
`spool/forward/queue.sqlite` in the archive folder or an object-store
archive's catalog, one row per peer and instance, committed before
`on_archived` returns), and a worker thread sends what is due. A restart
finds the queue as it was: nothing is lost, and an instance sent just
before a kill, whose row was not yet deleted, is sent again (the peer sees
a duplicate, never a gap).

What is sent is read from the archive through the server's integrity-checked
reads (damaged stored bytes are never forwarded):

- C-STORE: for each SOP class, one presentation context per transfer
  syntax, .202 first (or the syntax an instance kept as is is stored in),
  then Explicit VR Little Endian. The stored object goes as it is where the
  peer accepts its syntax; otherwise it is decoded to Explicit VR Little
  Endian by the server's conversion (`server.convert.explicit_le`). Files
  are sent without re-encoding (pynetdicom's STORE_SEND_CHUNKED_DATASET, set
  for our own calls only).
- STOW-RS: each instance POSTed as stored; where the peer refuses it, once
  more as Explicit VR Little Endian.

A peer that cannot be reached (no association, connection refused, HTTP
5xx) is retried with exponential back-off, capped at `retry_max` seconds,
for as long as it takes. An instance the peer refuses is retried the same
way up to `max_attempts` times, then left in the queue as `failed` with the
peer's answer, for a person (nothing is deleted unsent).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config

from transcode.archive import Archive
from transcode.archive.objects import ArchiveAddress
from transcode.catalog.base import InstanceRow
from transcode.dimse.scu import RemoteAE, no_delay
from transcode.entries import Entry, IngestOutcome
from transcode.server import convert
from transcode.server.service import Service

log = logging.getLogger(__name__)

#: Outcomes that put an instance (a new version of it) in the archive: forwarded.
FORWARDED = frozenset({IngestOutcome.TRANSCODED, IngestOutcome.KEPT, IngestOutcome.REPLACED})
#: Instances sent per association (or per STOW-RS round).
BATCH = 32
_WARNINGS = {0xB000, 0xB006, 0xB007}
_BOUNDARY = "transcode-forward"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    peer TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    attempts INTEGER NOT NULL DEFAULT 0,
    due REAL NOT NULL,
    last_error TEXT,
    queued_at REAL NOT NULL,
    PRIMARY KEY (peer, sop_uid)
);
"""


class PeerDown(RuntimeError):
    """The peer cannot be reached now: the whole queue waits."""


class Forwarder:
    """Sends instances archived at `archive` (an `ArchiveAddress`, or a
    folder path; the queue is in its local folder) to `peer` (a `RemoteAE`
    for C-STORE, or a STOW-RS URL such as http://host/dicomweb/studies),
    calling as `ae_title`."""

    def __init__(self, archive: ArchiveAddress | str | os.PathLike[str], peer: RemoteAE | str, *,
                 ae_title: str = "TRANSCODE", retry_base: float = 1.0, retry_max: float = 300.0, max_attempts: int = 10,
                 timeout: float = 30.0) -> None:
        self.archive = ArchiveAddress.of(archive)
        self.peer = peer
        self.key = str(peer)
        self.ae_title = ae_title
        self.retry_base, self.retry_max, self.max_attempts = retry_base, retry_max, max_attempts
        self.timeout = timeout
        self.folder = self.archive.local / "spool" / "forward"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.folder / "queue.sqlite", isolation_level=None, check_same_thread=False,
                                   timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._db_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._down = 0  # consecutive times the peer could not be reached

    # -- the queue -------------------------------------------------------------

    def on_archived(self, entry: Entry) -> None:
        """Queue an ingest entry's instance if it put one in the archive."""
        if entry.outcome in FORWARDED and entry.sop_uid:
            self.enqueue([entry.sop_uid])

    def enqueue(self, sop_uids: Iterable[str]) -> None:
        """Queue instances (committed on return); one queued already stays once."""
        now = time.time()
        with self._db_lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO queue (peer, sop_uid, due, queued_at) VALUES (?, ?, ?, ?) ON CONFLICT (peer, sop_uid) "
                "DO UPDATE SET state = 'queued', attempts = 0, due = excluded.due",
                [(self.key, sop, now, now) for sop in sop_uids])
        self._wake.set()

    def pending(self) -> dict[str, int]:
        """How many instances are queued and failed for this peer."""
        with self._db_lock:
            return dict(self._db.execute("SELECT state, COUNT(*) FROM queue WHERE peer = ? GROUP BY state",
                                         (self.key,)).fetchall())

    def failures(self) -> list[tuple[str, int, str | None]]:
        """(SOP Instance UID, attempts, the peer's last answer) of instances given up on."""
        with self._db_lock:
            return self._db.execute("SELECT sop_uid, attempts, last_error FROM queue WHERE peer = ? AND "
                                    "state = 'failed' ORDER BY sop_uid", (self.key,)).fetchall()

    def _due(self) -> tuple[list[tuple[str, int]], float | None]:
        """Instances due now (up to BATCH), and when the next one falls due."""
        now = time.time()
        with self._db_lock:
            due = self._db.execute("SELECT sop_uid, attempts FROM queue WHERE peer = ? AND state = 'queued' AND "
                                   "due <= ? ORDER BY due LIMIT ?", (self.key, now, BATCH)).fetchall()
            later = self._db.execute("SELECT MIN(due) FROM queue WHERE peer = ? AND state = 'queued'",
                                     (self.key,)).fetchone()[0]
        return due, later

    def _settle(self, results: dict[str, str | None], attempts: dict[str, int]) -> None:
        """Delete what was sent; reschedule or give up on what the peer refused."""
        now = time.time()
        with self._db_lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for sop, error in results.items():
                if error is None:
                    self._db.execute("DELETE FROM queue WHERE peer = ? AND sop_uid = ?", (self.key, sop))
                    continue
                tries = attempts[sop] + 1
                state = "failed" if tries >= self.max_attempts else "queued"
                self._db.execute("UPDATE queue SET state = ?, attempts = ?, due = ?, last_error = ? "
                                 "WHERE peer = ? AND sop_uid = ?",
                                 (state, tries, now + self._backoff(tries), error, self.key, sop))
                log.warning("forwarding %s to %s: %s (attempt %d%s)", sop, self.key, error, tries,
                            ", given up" if state == "failed" else "")

    def _backoff(self, tries: int) -> float:
        return min(self.retry_max, self.retry_base * 2 ** (tries - 1))

    # -- the worker ------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread (queued instances of a previous run included)."""
        self._thread = threading.Thread(target=self._run, name=f"forward-{self.key}", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop after the batch under way; what is left stays queued."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._db_lock:
            self._db.close()

    def drain(self, timeout: float) -> bool:
        """Wait until nothing is queued (for tests and a clean stop); True if so."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.pending().get("queued"):
                return True
            self._wake.set()
            time.sleep(0.05)
        return False

    def _run(self) -> None:
        archive: Archive | None = None
        service: Service | None = None
        try:
            while not self._stop.is_set():
                due, later = self._due()
                if not due:
                    self._wake.clear()
                    self._wake.wait(max(0.05, later - time.time()) if later is not None else None)
                    continue
                try:
                    if service is None:  # the server's read side: catalog, checked reads, conversion
                        archive = self.archive.open(read_only=True)
                        service = Service(archive)
                    results = self._send(service, [sop for sop, _ in due])
                except PeerDown as exc:
                    self._down += 1
                    wait = self._backoff(self._down)
                    log.warning("%s is down (%s): retrying in %.0f s", self.key, exc, wait)
                    self._stop.wait(wait)
                    continue
                except Exception:  # never let the thread die: log, wait, retry
                    log.exception("forwarding to %s failed", self.key)
                    self._stop.wait(self.retry_base)
                    continue
                self._down = 0
                self._settle(results, dict(due))
        finally:
            if archive is not None:
                archive.close()

    def _send(self, service: Service, sops: list[str]) -> dict[str, str | None]:
        """Send `sops`: None for each sent, else why not."""
        rows: dict[str, InstanceRow] = {}
        results: dict[str, str | None] = {}
        for sop in sops:
            row = service.archive.index.instance(sop)
            if row is None:
                results[sop] = "not in the archive"
            else:
                rows[sop] = row
        if rows:
            send = self._c_store if isinstance(self.peer, RemoteAE) else self._stow
            results.update(send(service, list(rows.values())))
        return results

    def _file(self, service: Service, row: InstanceRow, *, decoded: bool) -> Path:
        """The instance as a file to send: the stored object (its digest
        checked as it is copied), or decoded to Explicit VR Little Endian."""
        if decoded:
            chunks: Iterator[bytes] | Iterable[bytes] = convert.explicit_le(
                service.reader, service.catalog.instance(row.study_uid, row.series_uid, row.sop_uid))
        else:
            chunks = service.reader.objects.stream(row)
        path = self.folder / f"{uuid.uuid4().hex}.dcm"
        try:
            with open(path, "wb") as out:
                out.writelines(chunks)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    # -- C-STORE ------------------------------------------------------------------

    def _c_store(self, service: Service, rows: list[InstanceRow]) -> dict[str, str | None]:
        assert isinstance(self.peer, RemoteAE)
        ae = AE(self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        proposed = []
        for sop_class, syntax in dict.fromkeys((_sop_class(row), ts) for row in rows for ts in _offered(row)):
            if len(proposed) < 128:
                ae.add_requested_context(sop_class, syntax)
                proposed.append((sop_class, syntax))
        assoc = ae.associate(self.peer.host, self.peer.port, ae_title=self.peer.ae_title)
        if not assoc.is_established and assoc.rejected_contexts:  # it answered, and accepts none of them
            return {row.sop_uid: f"the peer accepts none of {', '.join(_offered(row))} for SOP class "
                                 f"{_sop_class(row)}" for row in rows}
        if not assoc.is_established:
            raise PeerDown(f"association {'rejected' if assoc.is_rejected else 'failed'}")
        no_delay(assoc)
        accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
        results: dict[str, str | None] = {}
        try:
            for row in rows:
                sop_class = _sop_class(row)
                if (sop_class, row.transfer_syntax) in accepted:
                    decoded = False
                elif (sop_class, ExplicitVRLittleEndian) in accepted and convert.possible(row):
                    decoded = True
                else:
                    results[row.sop_uid] = (f"the peer accepts none of {', '.join(_offered(row))} for SOP class "
                                            f"{sop_class}")
                    continue
                results[row.sop_uid] = self._store_one(assoc, service, row, decoded)
                if not assoc.is_established:
                    raise PeerDown("the association ended while sending")
        finally:
            if assoc.is_established:
                assoc.release()
        return results

    def _store_one(self, assoc: Any, service: Service, row: InstanceRow, decoded: bool) -> str | None:
        try:
            path = self._file(service, row, decoded=decoded)
        except Exception as exc:  # integrity errors, a conversion the decoders refuse: this instance only
            return f"cannot read it from the archive: {exc}"
        chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
        try:  # the file's data set bytes as they are, never decoded and re-encoded by pydicom
            status = assoc.send_c_store(path)
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = chunked  # a process-wide setting: as the process had it
            path.unlink(missing_ok=True)
        if "Status" not in status:
            return "no answer to C-STORE (timed out or aborted)"
        if status.Status == 0 or status.Status in _WARNINGS:
            return None
        return f"C-STORE status 0x{status.Status:04X} {status.get('ErrorComment', '')}".rstrip()

    # -- STOW-RS ------------------------------------------------------------------

    def _stow(self, service: Service, rows: list[InstanceRow]) -> dict[str, str | None]:
        results: dict[str, str | None] = {}
        for row in rows:
            error = self._post(service, row, decoded=False)
            if error is not None and convert.possible(row) and row.transfer_syntax != ExplicitVRLittleEndian:
                retry = self._post(service, row, decoded=True)
                error = None if retry is None else f"{error}; as Explicit VR Little Endian: {retry}"
            results[row.sop_uid] = error
        return results

    def _post(self, service: Service, row: InstanceRow, *, decoded: bool) -> str | None:
        """POST one instance; None when the peer stored it. PeerDown when it cannot be reached."""
        try:
            path = self._file(service, row, decoded=decoded)
        except Exception as exc:  # integrity errors, a conversion the decoders refuse: this instance only
            return f"cannot read it from the archive: {exc}"
        try:
            syntax = ExplicitVRLittleEndian if decoded else row.transfer_syntax
            head = (f"--{_BOUNDARY}\r\nContent-Type: application/dicom; transfer-syntax={syntax}\r\n\r\n").encode()
            tail = f"\r\n--{_BOUNDARY}--\r\n".encode()
            request = urllib.request.Request(
                str(self.peer), data=_chunks(head, path, tail), method="POST",
                headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={_BOUNDARY}',
                         "Content-Length": str(len(head) + path.stat().st_size + len(tail)),
                         "Accept": "application/dicom+json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read()
                    return None
            except urllib.error.HTTPError as exc:
                if exc.code >= 500 or exc.code == 429:
                    raise PeerDown(f"HTTP {exc.code}") from exc
                return f"STOW-RS answered HTTP {exc.code}: {_failure(exc.read())}"
            except OSError as exc:  # refused, reset, timed out
                raise PeerDown(str(exc)) from exc
        finally:
            path.unlink(missing_ok=True)


def _chunks(head: bytes, path: Path, tail: bytes) -> Iterator[bytes]:
    yield head
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            yield chunk
    yield tail


def _failure(body: bytes) -> str:
    """The Failure Reason of a STOW-RS answer, where it has one."""
    try:
        failed = json.loads(body)["00081198"]["Value"][0]
        return f"failure reason 0x{failed['00081197']['Value'][0]:04X}"
    except (ValueError, KeyError, IndexError, TypeError):
        return body[:200].decode(errors="replace")


def _sop_class(row: InstanceRow) -> str:
    return str(json.loads(row.dicom_json).get("00080016", {}).get("Value", [""])[0])


def _offered(row: InstanceRow) -> list[str]:
    """Transfer syntaxes proposed for an instance, in order: what it is
    stored in (.202 for a transcoded one), then Explicit VR Little Endian."""
    return list(dict.fromkeys([row.transfer_syntax, ExplicitVRLittleEndian]))

