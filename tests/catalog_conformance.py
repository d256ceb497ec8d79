"""What every `Catalog` backend must do: one suite, run for each backend by
`tests/test_catalogs.py` (as tests/store_conformance.py is for stores).

A subclass provides `where` (what `open_catalog` opens for an empty
catalog); the suite opens `catalog` there (schema created) and, through
`open_again`, a second catalog over the same database, as another process
would. The data is the served test archive's (tests/served.py:
two studies of real pixel data ingested by the pipeline), replayed into the
catalog under test, so the rows and codestream indexes are real; QIDO
answers are checked against what the data says and against the SQLite
catalog the server tests check over HTTP."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from transcode.archive.identity import Identity
from transcode.catalog import open_catalog
from transcode.catalog.base import ArchiveBusy, Catalog, Record
from transcode.catalog.sqlite import SQLiteCatalog
from transcode.server import qido


def replay(archive: Path, target: Catalog) -> list[Record]:
    """Record the served archive's instances into `target` in arrival
    order, one ledger row each (the source path is the object's); the records."""
    source = SQLiteCatalog(archive / "index.sqlite", read_only=True)
    try:
        with sqlite3.connect(f"{(archive / 'index.sqlite').as_uri()}?mode=ro", uri=True) as db:
            studies = dict(db.execute("SELECT study_uid, dicom_json FROM studies"))
            series = dict(db.execute("SELECT series_uid, dicom_json FROM series"))
            order = [sop for (sop,) in db.execute("SELECT sop_uid FROM instances ORDER BY rowid")]
        records = []
        for sop in order:
            row = source.instance(sop)
            assert row is not None
            ledger = {"source_path": f"/sources/{row.path}", "source_size": row.size, "source_mtime_ns": 1_700_000_000,
                      "outcome": row.outcome, "sop_uid": sop, "object_digest": row.object_digest}
            records.append(Record(ledger, row, source.frames(sop), studies[row.study_uid], series[row.series_uid]))
    finally:
        source.close()
    target.record(records)
    return records


def _uids(catalog: Catalog, level: str, query: list[tuple[str, str]], scope: dict[str, str] | None = None,
          tag: str = "0020000D") -> list[str]:
    results, _ = qido.search(catalog, level, query, scope or {}, lambda *uids: "/".join(u for u in uids if u))
    return [item[tag]["Value"][0] for item in results]


#: Searches whose answers must be the same in every backend (study, series
#: and instance level; matching, wildcards, ranges, lists, includefield).
SEARCHES: list[tuple[str, list[tuple[str, str]]]] = [
    ("study", []),
    ("study", [("PatientName", "other*")]),
    ("study", [("PatientName", "*PATIENT")]),
    ("study", [("PatientID", "PID-000?")]),
    ("study", [("PatientID", "PID_000%")]),          # SQL wildcards are literal characters
    ("study", [("StudyDate", "20250101-20251231")]),
    ("study", [("StudyDate", "-20251231")]),
    ("study", [("StudyDate", "20260101-")]),
    ("study", [("StudyInstanceUID", "\\")]),
    ("study", [("ModalitiesInStudy", "US")]),
    ("study", [("ModalitiesInStudy", "US,CR")]),
    ("study", [("Modality", "X?,M*")]),
    ("study", [("Modality", "MR")]),
    ("study", [("StudyDescription", "Chest [PA]")]),
    ("study", [("SOPClassUID", "1.2.840.10008.5.1.4.1.1.1")]),
    ("study", [("includefield", "all")]),
    ("study", [("includefield", "Rows,00280011")]),
    ("study", [("limit", "1"), ("offset", "1")]),
    ("series", []),
    ("series", [("Modality", "US")]),
    ("series", [("PatientName", "demo*")]),
    ("series", [("includefield", "all")]),
    ("instance", []),
    ("instance", [("InstanceNumber", "2")]),
    ("instance", [("Rows", "600")]),
    ("instance", [("Modality", "CT"), ("limit", "2")]),
    ("instance", [("includefield", "all"), ("offset", "3")]),
]


class CatalogTests:
    """Subclass and provide a `where` fixture: what `open_catalog` opens
    (a folder, a database URL) for an empty catalog."""

    @pytest.fixture
    def catalog(self, where: str) -> Iterator[Catalog]:
        catalog = open_catalog(where)
        catalog.create()
        yield catalog
        catalog.close()

    @pytest.fixture
    def open_again(self, where: str) -> Callable[[], Catalog]:
        """A second catalog over the same database, as another process opens it."""
        return lambda: open_catalog(where)

    def test_identity_round_trip(self, catalog: Catalog, open_again: Callable[[], Catalog]) -> None:
        assert catalog.identity() is None
        identity = Identity.new()
        catalog.set_identity(identity)
        catalog.set_identity(identity.next())
        with open_again() as other:
            assert other.identity() == identity.next()

    def test_record_and_read_back(self, catalog: Catalog, served: Any) -> None:
        records = replay(served.root, catalog)
        for record in records:
            row, frames = record.instance, list(record.frames)
            assert row is not None
            assert catalog.instance(row.sop_uid) == row
            assert catalog.frames(row.sop_uid) == frames  # codestream JSON equal, digests, offsets
            stored = catalog.stored(row.study_uid, row.series_uid, row.sop_uid)
            assert stored is not None
            assert stored[0] == row
            assert [(n, o, ln, json.loads(cs), d) for n, o, ln, cs, d in stored[1]] == \
                [(f.number, f.offset, f.length, f.codestream, f.digest) for f in frames]
            assert catalog.dicom_json(row.sop_uid) == row.dicom_json  # the stored text, byte for byte
            assert catalog.located(row.sop_uid) == (row.study_uid, row.series_uid)
            assert catalog.object_version(row.sop_uid) == (row.path, row.object_digest)
        assert catalog.stored(records[0].instance.study_uid, "1.2.3", records[0].instance.sop_uid) is None
        assert catalog.object_version("1.2.3.4.5") is None
        assert sorted(r.sop_uid for r in catalog.instances()) == sorted(r.instance.sop_uid for r in records)
        counts = catalog.counts()
        assert counts["instances"] == counts["ledger"] == len(records)
        assert counts["frames"] == sum(len(r.frames) for r in records)
        assert counts["studies"] == len({r.instance.study_uid for r in records})
        assert catalog.listed() == (len(records), 0)
        study = records[0].instance.study_uid
        assert catalog.study_instances(study) == {r.instance.sop_uid for r in records if r.instance.study_uid == study}

    def test_patient_id(self, catalog: Catalog, served: Any) -> None:
        records = replay(served.root, catalog)
        for record in records:
            study = record.instance.study_uid
            patient = served.source(record.instance.sop_uid).PatientID
            assert patient and catalog.patient_id(study) == patient
        assert catalog.patient_id("1.2.3.4.5") is None

    def test_record_again_replaces(self, catalog: Catalog, served: Any) -> None:
        records = replay(served.root, catalog)
        catalog.record(records[:1])  # the same instance recorded again: one row, its frames once
        assert catalog.counts()["instances"] == len(records)
        assert catalog.frames(records[0].instance.sop_uid) == list(records[0].frames)

    def test_ledger_done(self, catalog: Catalog) -> None:
        done = {"source_path": "/in/a.dcm", "source_size": 10, "source_mtime_ns": 2**62, "outcome": "kept"}
        failed = {**done, "source_path": "/in/b.dcm", "outcome": "failed", "reason": "unreadable"}
        catalog.record([Record(done), Record(failed)])
        assert catalog.done("/in/a.dcm", 10, 2**62)  # nanosecond times beyond 32 bits
        assert not catalog.done("/in/a.dcm", 11, 2**62)
        assert not catalog.done("/in/b.dcm", 10, 2**62)  # failures are tried again

    def test_conflicts(self, catalog: Catalog) -> None:
        ledger = {"source_path": "/in/c.dcm", "source_size": 1, "source_mtime_ns": 1, "outcome": "conflict",
                  "sop_uid": "1.2.3"}
        catalog.record([Record(ledger, conflict=("conflicts/1.2.3/x.dcm", "d1", None)),
                        Record(ledger, conflict=("conflicts/1.2.3/x.dcm", "d1", None)),
                        Record(ledger, conflict=("conflicts/1.2.3/y.dcm", "d2", "p2"))])
        assert catalog.listed() == (0, 2)
        assert catalog.conflict_paths() == {"conflicts/1.2.3/x.dcm", "conflicts/1.2.3/y.dcm"}
        assert catalog.counts()["conflicts"] == 3

    def test_migration_rows(self, catalog: Catalog) -> None:
        catalog.set_migration("PACS", "1.2", "pending", expected=4)
        catalog.set_migration("PACS", "1.2", "retrieving")
        catalog.set_migration("PACS", "1.2", "retrieving")
        catalog.set_migration("PACS", "1.2", "done", received=4, archived=3, failed=1, detail="one failed")
        catalog.set_migration("OTHER", "1.3", "pending")
        rows = catalog.migration("PACS")
        assert list(rows) == ["1.2"]
        row = rows["1.2"]
        assert (row.state, row.expected, row.received, row.archived, row.failed, row.attempts, row.detail) == \
            ("done", 4, 4, 3, 1, 2, "one failed")
        assert row.first_at <= row.updated_at

    def test_viewer_order(self, catalog: Catalog, served: Any) -> None:
        records = replay(served.root, catalog)
        arrival = [r.instance.sop_uid for r in records]

        def number(sop: str) -> int:
            meta = json.loads(catalog.dicom_json(sop) or "{}")
            return int(meta["00200013"]["Value"][0])

        for study in {r.instance.study_uid for r in records}:
            rows = catalog.members(study)
            expected = sorted((r for r in records if r.instance.study_uid == study),
                              key=lambda r: (r.instance.series_uid, number(r.instance.sop_uid),
                                             arrival.index(r.instance.sop_uid)))
            assert [r.sop_uid for r in rows] == [r.instance.sop_uid for r in expected]
            for series in {r.series_uid for r in rows}:
                assert [r.sop_uid for r in catalog.members(study, series)] == \
                    [r.sop_uid for r in rows if r.series_uid == series]
                count, _ = catalog.signature(study, series)
                assert count == len(catalog.members(study, series))
        assert catalog.members("1.2.3") == []

    def test_signature_changes_with_arrivals(self, catalog: Catalog, served: Any) -> None:
        records = replay(served.root, catalog)
        row = records[0].instance
        before = catalog.signature(row.study_uid, row.series_uid)
        moved = Record(None, type(row)(**{**{n: getattr(row, n) for n in row.__slots__}, "sop_uid": "1.2.3.4"}),
                       (), records[0].study_json, records[0].series_json)
        catalog.record([moved])
        assert catalog.signature(row.study_uid, row.series_uid) != before

    def test_qido_searches(self, catalog: Catalog, served: Any) -> None:
        replay(served.root, catalog)
        a, b = served.study_a, served.study_b
        assert _uids(catalog, "study", [("PatientName", "other*")]) == [b]
        assert _uids(catalog, "study", [("PatientName", "Demo^Patient")]) == [a]  # exact, case-insensitive name
        assert _uids(catalog, "study", [("PatientName", "Demo")]) == []  # no fuzzy matching
        assert _uids(catalog, "study", [("StudyDate", "20250101-20251231")]) == [b]
        assert _uids(catalog, "study", [("StudyDescription", "Chest [PA]")]) == [b]
        assert _uids(catalog, "study", [("PatientID", "PID_000%")]) == []
        assert _uids(catalog, "study", [("StudyInstanceUID", f"{a},{b}")]) == [a, b]  # arrival order
        assert _uids(catalog, "study", [("StudyInstanceUID", ",")]) == [a, b]  # no UIDs listed: as an empty value
        assert _uids(catalog, "study", [("ModalitiesInStudy", "XA,CR")]) == [b]  # a code list: any of them
        assert _uids(catalog, "study", [("ModalitiesInStudy", "US\\CR")]) == [a, b]
        assert _uids(catalog, "study", [("Modality", "X?,M*")]) == [a]
        assert _uids(catalog, "study", [("limit", "1"), ("offset", "1")]) == [b]
        ct = _uids(catalog, "instance", [("Modality", "CT")], tag="00080018")
        assert len(ct) == 3
        assert _uids(catalog, "instance", [("Modality", "CT"), ("limit", "2"), ("offset", "1")], tag="00080018") == \
            ct[1:3]
        results, _ = qido.search(catalog, "study", [("includefield", "Rows")], {}, lambda *u: "")
        assert {r["0020000D"]["Value"][0]: r["00280010"]["Value"][0] for r in results}[b] == 600
        series = _uids(catalog, "series", [], {"0020000D": a}, tag="0020000E")
        assert len(series) == 3

    def test_names_in_any_script_match_whatever_their_case(self, catalog: Catalog, served: Any) -> None:
        """Both sides of a name comparison are upper-cased by the database:
        SQLite's own upper() is ASCII-only, so 'Müller' never matched. Any
        component group matches: a name typed in kanji finds its Ideographic
        group. An empty name among several is a JSON null (PS3.18 F.2.5)."""
        first = replay(served.root, catalog)[0]
        row = first.instance
        study = "1.2.826.0.1.3680043.8.498.777"
        assert first.study_json is not None and '{"Alphabetic":"Demo^Patient"}' in first.study_json
        renamed = Record(None, type(row)(**{**{n: getattr(row, n) for n in row.__slots__}, "sop_uid": "1.2.3.4",
                                            "study_uid": study, "series_uid": "1.2.3.5"}), (),
                         first.study_json.replace('{"Alphabetic":"Demo^Patient"}',
                                                  '{"Alphabetic":"Müller^Jürgen","Ideographic":"山田^太郎"},null')
                         .replace(row.study_uid, study),
                         first.series_json.replace(row.series_uid, "1.2.3.5") if first.series_json else None)
        catalog.record([renamed])
        for name in ("Müller^Jürgen", "müller^jürgen", "MÜLLER*", "*jürgen", "山田^太郎", "山田*",
                     "müller^jürgen=山田^太郎", "*=山田^太郎", "Müller^Jürgen=山田^太郎=="):
            assert _uids(catalog, "study", [("PatientName", name)]) == [study], name
        for name in ("Muller*", "Müller^Jürgen=山田", "山田^太郎=Müller^Jürgen"):  # a whole name matches as written
            assert _uids(catalog, "study", [("PatientName", name)]) == [], name

    def test_qido_answers_as_sqlite_does(self, catalog: Catalog, served: Any) -> None:
        replay(served.root, catalog)
        reference = SQLiteCatalog(served.root / "index.sqlite", read_only=True)
        try:
            for level, query in SEARCHES:
                answers = [qido.search(c, level, query, {}, lambda *uids: "/".join(u for u in uids if u))[0]
                           for c in (catalog, reference)]
                assert answers[0] == answers[1], (level, query)
        finally:
            reference.close()

    def test_second_writer_refused(self, catalog: Catalog, open_again: Callable[[], Catalog]) -> None:
        catalog.lock()
        with open_again() as other:
            with pytest.raises(ArchiveBusy):
                other.lock()
            catalog.close()  # the lock goes with the first writer
            other.lock()
