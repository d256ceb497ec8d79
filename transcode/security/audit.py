"""The audit trail: who touched which study, when, from where, with what outcome.

Append-only JSON lines in a folder (`audit.jsonl`, rotated by size to
`audit.000001.jsonl`, `audit.000002.jsonl`, ...). Each line carries `seq`,
the `prev` line's hash and its own `hash`: SHA-256 of the line's canonical
JSON without `hash`. Editing a line changes its hash; removing, inserting or
reordering lines breaks `prev` or `seq`; `verify` reports the line. The
chain runs on across rotated files and restarts: the writer reads the last
hash from the files under an exclusive lock before each batch, so several
server processes (uvicorn workers) append to one chain. Removing lines from
the *end* leaves a valid shorter chain: keep the head hash that `verify`
prints somewhere else to detect it.

Writes are off the event loop: `record` puts the event on a queue (no I/O,
no hashing); one thread per process waits `linger` seconds (20 ms) after
the first event of a batch, takes whatever has queued and hands the batch
to a `Chain`, which resolves patient ids from the archive's catalog
(read-only), chains, and appends the batch with one `write`. In `serve`
the chain runs in a child process (`audit_process`), so that making the
lines does not hold the server's interpreter lock. A line per request,
written as it comes, cost the frame route far more than the 0.9x allowed
on a loaded machine (the writer's wake-ups and system calls compete with
the event loop for the GIL: README figures); the linger makes it one write
per 20 ms. So a kill -9 of the server loses the events of at most the last
20 ms (requests already answered; with the child, what it received is
still written); `fsync=True` also survives a power cut, at a disk flush
per batch. `close` (the app's shutdown) writes everything queued.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, Self

from transcode.catalog import Catalog, CatalogError, open_catalog
from transcode.security.audit_process import TrailProcess

log = logging.getLogger(__name__)

CURRENT = "audit.jsonl"
GENESIS = "0" * 64
_ROTATED = re.compile(r"audit\.(\d{6})\.jsonl")
_TAIL = 1 << 16
_SPELLINGS = 4096
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))  # made once: half the cost of json.dumps


@dataclass(frozen=True, slots=True)
class Touched:
    """One instance (or study, series) an event concerns."""

    study: str | None = None
    series: str | None = None
    instance: str | None = None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What happened, as the server saw it. `who`: a token's subject,
    `key:<id>` for an API key, `ae:<title>` for a DICOM caller, `anonymous`
    where authentication is off; `action`: search, retrieve, render, store,
    other; `outcome`: success, denied (401/403), failure (any other error)."""

    who: str
    source: str
    action: str
    method: str
    route: str
    status: int
    outcome: str
    touched: tuple[Touched, ...] = ()
    query: str | None = None
    time: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class Problem:
    """A line `verify` found broken: file name, line number (1-based), why."""

    file: str
    line: int
    reason: str


@dataclass(frozen=True, slots=True)
class Verified:
    """The outcome of `verify`: lines read, the last hash (the head to keep
    elsewhere), and the problems found (none: the chain is whole)."""

    lines: int
    head: str
    problems: tuple[Problem, ...]


def files(folder: Path) -> list[Path]:
    """The trail's files, oldest first (the rotated ones by number, then the current)."""
    rotated = sorted(p for p in folder.glob("audit.*.jsonl") if _ROTATED.fullmatch(p.name))
    current = folder / CURRENT
    return rotated + ([current] if current.exists() else [])


def digest(record: dict[str, Any]) -> str:
    """The hash of a line: SHA-256 of its canonical JSON without `hash`."""
    return hashlib.sha256(_canonical({k: v for k, v in record.items() if k != "hash"}).encode()).hexdigest()


def _canonical(record: dict[str, Any]) -> str:
    return _ENCODER.encode(record)


def records(folder: Path) -> Iterator[tuple[str, int, dict[str, Any] | None]]:
    """(file name, line number, record or None when the line is not JSON) for every line, oldest first."""
    for path in files(folder):
        with path.open("rb") as f:
            for number, raw in enumerate(f, 1):
                try:
                    record = json.loads(raw)
                except ValueError:
                    record = None
                yield path.name, number, record if isinstance(record, dict) else None


def verify(folder: Path) -> Verified:
    """Walk the chain through every file: each line's hash, its `prev` and
    its `seq` against the line before. After a broken line the walk goes on
    from that line's own values, so that one edit is reported once."""
    prev, seq, count, problems = GENESIS, 0, 0, []
    for name, number, record in records(folder):
        count += 1
        if record is None:
            problems.append(Problem(name, number, "not a JSON object"))
            continue
        if record.get("hash") != digest(record):
            problems.append(Problem(name, number, "the line's content does not match its hash (edited)"))
        elif record.get("prev") != prev:
            problems.append(Problem(name, number, "does not follow the line before (a line removed, "
                                                  "inserted or moved before it)"))
        elif record.get("seq") != seq + 1:
            problems.append(Problem(name, number, f"sequence number {record.get('seq')} after {seq}"))
        prev, seq = str(record.get("hash")), int(record.get("seq") or 0)
    return Verified(count, prev, tuple(problems))


#: An event to be made where the line is written: (function, *arguments),
#: called by the writer (in `serve`'s trail process: both must pickle, so a
#: module-level function and plain values). The guard queues these: matching
#: the route and making the event are off the request's path.
Pending = tuple[Any, ...]


class AuditLog:
    """The trail in `folder` (created if missing), for one process:
    `record` queues an event and returns; a writer thread waits `linger`
    seconds after the first event of a batch for more to join it (fewer,
    larger writes: see the module's note), then appends the batch, itself
    or (`separate`) through a child process (`audit_process`: what `serve`
    does, so that the work leaves the server's interpreter lock).
    `catalog`, `max_bytes`, `fsync`: as for `Chain`."""

    def __init__(self, folder: Path, *, catalog: str | os.PathLike[str] | None = None, max_bytes: int = 64 << 20,
                 fsync: bool = False, linger: float = 0.02, separate: bool = False) -> None:
        self.folder, self.linger = Path(folder), linger
        self.folder.mkdir(parents=True, exist_ok=True)
        where = None if catalog is None else os.fspath(catalog)
        self._sink: Chain | TrailProcess = (TrailProcess(self.folder, where, max_bytes, fsync) if separate
                                            else Chain(self.folder, catalog=where, max_bytes=max_bytes, fsync=fsync))
        self._queue: queue.SimpleQueue[AuditEvent | Pending | threading.Event | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def record(self, event: AuditEvent | Pending) -> None:
        """Queue `event`, made or pending, for writing (returns at once)."""
        self._queue.put(event)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every event recorded so far is written (False on timeout)."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self) -> None:
        """Write everything queued, then stop the writer (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        self._sink.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is not None and not isinstance(item, threading.Event) and self.linger:
                time.sleep(self.linger)  # let the requests of the next moment join this batch
            batch = []
            while item is not None and not isinstance(item, threading.Event):
                batch.append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = _DRAINED
            if batch:
                try:
                    self._sink.append(batch)
                except Exception:  # the server goes on; the loss is logged loudly
                    log.exception("%d audit events could not be written to %s", len(batch), self.folder)
            if item is None:
                return
            if item is not _DRAINED and (isinstance(self._sink, Chain) or self._sink.wait(30.0)):
                item.set()  # a flush: everything before it is written (else its caller times out)


#: What the writer thread holds after taking everything queued: no flush to answer.
_DRAINED = threading.Event()


class Chain:
    """Appends lines to the chain in `folder`, in the calling thread.
    `catalog`: the archive's catalog (its folder, or a PostgreSQL URL: what
    `open_catalog` takes), read-only, to look up each study's Patient ID;
    `max_bytes`: the size at which the current file is rotated; `fsync`:
    each batch reaches the disk before `append` returns."""

    def __init__(self, folder: Path, *, catalog: str | None = None, max_bytes: int = 64 << 20,
                 fsync: bool = False) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.catalog, self.max_bytes, self.fsync = catalog, max_bytes, fsync
        self._lock = os.open(self.folder / "audit.lock", os.O_RDWR | os.O_CREAT, 0o600)
        self._known: tuple[int, int, int, str] | None = None  # (inode, size, seq, hash) after our last write
        self._path = str(self.folder / CURRENT)
        self._fd: int | None = None
        self._inode = 0
        self._patients: dict[str, str | None] = {}
        self._spellings: dict[str | tuple[str, str, str, str], str] = {}
        self._second: tuple[int, str] = (-1, "")
        self._catalog: Catalog | None = None  # opened by the first look-up, in the thread that writes

    def close(self) -> None:
        os.close(self._lock)
        if self._fd is not None:
            os.close(self._fd)
        if self._catalog is not None:
            self._catalog.close()

    def append(self, batch: list[AuditEvent | Pending]) -> None:
        """Make the events of `batch` (one whose function fails is logged
        and left out) and append their lines to the chain, with one write."""
        events = []
        for item in batch:
            try:
                events.append(item if isinstance(item, AuditEvent) else item[0](*item[1:]))
            except Exception:  # a bug in making one event must not lose the batch
                log.exception("an audit event could not be made")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            size, seq, prev = self._tail()
            lines = []
            for event in events:
                seq += 1
                body = self._body(event, seq, prev)
                prev = hashlib.sha256(body.encode()).hexdigest()
                lines.append(f'{body[:-1]},"hash":"{prev}"}}\n')  # the canonical JSON, hash added last
            data = "".join(lines).encode()
            if size and size + len(data) > self.max_bytes:
                number = max((int(m.group(1)) for p in self.folder.iterdir()
                              if (m := _ROTATED.fullmatch(p.name))), default=0) + 1
                os.rename(self._path, self.folder / f"audit.{number:06d}.jsonl")
                self._open()
                size = 0
            os.write(self._fd, data)
            if self.fsync:
                os.fsync(self._fd)
            self._known = (self._inode, size + len(data), seq, prev)
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    def _open(self) -> None:
        """(Re)open the current file for appending (after a rotation, ours or another process's)."""
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._inode = os.fstat(self._fd).st_ino

    def _tail(self) -> tuple[int, int, str]:
        """(size of the current file, seq, hash) at the chain's end: ours
        from the last write when nobody else wrote since, else read from
        the files (a restart, another worker process, a rotation)."""
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            st = None
        if st is None or self._fd is None or st.st_ino != self._inode:
            self._open()
            st = os.fstat(self._fd)
        if self._known is not None and self._known[:2] == (st.st_ino, st.st_size):
            return self._known[1:]
        for candidate in reversed(files(self.folder)):
            last = _last_line(candidate)
            if last is not None:
                record = json.loads(last)
                return st.st_size, int(record["seq"]), str(record["hash"])
        return st.st_size, 0, GENESIS

    def _body(self, event: AuditEvent, seq: int, prev: str) -> str:
        """The line without its hash, as canonical JSON (keys sorted, no
        spaces, ASCII): spelled out here because it is twice as fast as
        building a dict and encoding it, and it is the writer's whole cost.
        `digest` re-encodes a parsed line with the JSON encoder, and `verify`
        compares: the tests hold the two spellings equal, odd text included."""
        touched = ",".join(self._touched(t) for t in event.touched)
        head = self._spelled((event.action, event.source, event.method, event.outcome))
        return (f'{head},"prev":"{prev}","query":{_text(event.query)},"route":{self._spelled(event.route)},'
                f'"seq":{seq},"status":{int(event.status)},"time":"{self._time(event.time)}","touched":[{touched}],'
                f'"who":{self._spelled(event.who)}}}')

    def _spelled(self, value: str | tuple[str, str, str, str]) -> str:
        """A value that repeats from line to line (who, route; action, from,
        method and outcome together: the line's head) spelled once: a
        dictionary look-up instead of JSON escaping each time."""
        if (text := self._spellings.get(value)) is None:
            if len(self._spellings) > _SPELLINGS:
                self._spellings.clear()
            if isinstance(value, tuple):
                action, source, method, outcome = map(_text, value)
                text = f'{{"action":{action},"from":{source},"method":{method},"outcome":{outcome}'
            else:
                text = _text(value)
            self._spellings[value] = text
        return text

    def _touched(self, touched: Touched) -> str:
        """One `touched` object in canonical JSON (keys sorted; empty UIDs left out)."""
        parts = [f'"instance":{_text(touched.instance)}'] if touched.instance else []
        parts.append(f'"patient":{_text(self._patient(touched.study))}')
        if touched.series:
            parts.append(f'"series":{self._spelled(touched.series)}')
        if touched.study:
            parts.append(f'"study":{self._spelled(touched.study)}')
        return "{" + ",".join(parts) + "}"

    def _time(self, when: float) -> str:
        """`when` in ISO 8601 (UTC, milliseconds); the part up to the second formatted once a second."""
        second = int(when)
        if second != self._second[0]:
            self._second = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
        return f"{self._second[1]}.{int((when - second) * 1000):03d}+00:00"

    def _patient(self, study: str | None) -> str | None:
        """The Patient ID of `study` from the catalog (cached; None when unknown)."""
        if study is None or self.catalog is None:
            return None
        if study not in self._patients:
            if len(self._patients) > 10_000:
                self._patients.clear()
            try:
                if self._catalog is None:
                    self._catalog = open_catalog(self.catalog, read_only=True)
                patient = self._catalog.patient_id(study)
            except (CatalogError, sqlite3.Error, OSError) as exc:  # no catalog (yet): the line goes without
                log.warning("audit: no patient id for study %s: %s", study, exc)
                return None
            if patient is None:
                return None  # not archived (yet): looked up again next time
            self._patients[study] = patient
        return self._patients[study]


def _text(value: str | None) -> str:
    """A JSON string (or null) exactly as the canonical encoder writes it."""
    return "null" if value is None else encode_basestring_ascii(value)


def _last_line(path: Path) -> bytes | None:
    """The last non-empty line of `path`, or None."""
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        chunk = _TAIL
        while True:
            f.seek(max(0, size - chunk))
            lines = f.read().rstrip(b"\n").rsplit(b"\n", 1)
            if len(lines) == 2 or chunk >= size:
                return lines[-1] or None
            chunk *= 4
