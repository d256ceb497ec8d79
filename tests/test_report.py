"""The ingest's report: running totals, progress lines, the report file."""

from __future__ import annotations

import io
import json
from pathlib import Path

from transcode.entries import Entry, IngestOutcome, IngestReport
from transcode.report import Progress, ReportFile, print_summary

ENTRIES = [
    Entry("/a", IngestOutcome.TRANSCODED, frames=1, bytes_in=2_000_000, bytes_out=1_000_000),
    Entry("/b", IngestOutcome.TRANSCODED, frames=69, bytes_in=640_000_000, bytes_out=200_000_000),
    Entry("/c", IngestOutcome.FAILED, "not_dicom", "no DICM", bytes_in=500_000),
    Entry("/d", IngestOutcome.KEPT, frames=1, bytes_in=1_500_000, bytes_out=1_500_000),
]

def test_totals_without_keeping_entries() -> None:
    """What a million-file run keeps: totals, and the files a person must see."""
    report = IngestReport()
    for entry in ENTRIES:
        report.add(entry, keep=False)
    assert report.entries == [] and report.attention == [ENTRIES[2]] and not report.clean
    assert report.files == 4 and report.frames == 71
    assert report.counts() == {"transcoded": 2, "failed": 1, "kept": 1}
    assert report.bytes() == (642_000_000, 201_000_000)
    assert report.bytes(None) == (644_000_000, 202_500_000)
    out = io.StringIO()
    print_summary(report, out)
    assert "4 files in" in out.getvalue() and "failed: /c: not_dicom: no DICM" in out.getvalue()


def test_log_lines_carry_running_totals() -> None:
    """Off a terminal: a line when due and at the end."""
    stream = io.StringIO()
    progress = Progress(stream, every=3600.0)
    report = IngestReport()
    for done, entry in enumerate(ENTRIES, 1):
        report.add(entry)
        progress(report, done, len(ENTRIES))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # the first file (none printed before) and the last
    assert lines[0].startswith("ingest: 1/4 files, 1 frames, 2.0 MB,")
    assert lines[1].startswith("ingest: 4/4 files, 71 frames, 644.0 MB,")


def test_first_line_right_after_boot(monkeypatch) -> None:
    """The monotonic clock counts from boot: a machine up for less than
    `every` seconds must still print the first file's line (it printed
    nothing until the end for the first hour after boot)."""
    monkeypatch.setattr("transcode.report.time.monotonic", lambda: 5.0)
    stream = io.StringIO()
    progress = Progress(stream, every=3600.0)
    report = IngestReport()
    report.add(ENTRIES[0])
    progress(report, 1, len(ENTRIES))
    assert stream.getvalue().startswith("ingest: 1/4 files")


def test_no_made_up_eta() -> None:
    """A migration from a PACS that does not count a study's instances has
    no total (it printed "1/0 files ... ETA 23:59:58"); a count that proves
    too low leaves nothing to wait for."""
    stream = io.StringIO()
    report = IngestReport()
    report.add(ENTRIES[0])
    Progress(stream)(report, 1, None)
    Progress(stream)(report, 3, 2)
    unknown, too_low = stream.getvalue().splitlines()
    assert unknown.startswith("ingest: 1 files, 1 frames, 2.0 MB,") and "ETA" not in unknown
    assert too_low.startswith("ingest: 3/2 files,") and too_low.endswith("ETA 00:00:00")


def test_report_file_is_partial_until_finished(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    report, writer = IngestReport(skipped=3), ReportFile(path)
    for entry in ENTRIES[:2]:
        report.add(entry, keep=False)
        writer.add(entry)
    writer.close()  # cut short: no report that looks complete
    assert not path.exists() and writer.partial.exists()
    with open(writer.partial) as f:
        assert f.read().startswith('{"instances": [')

    writer = ReportFile(path)
    for entry in ENTRIES:
        writer.add(entry)
        report.add(entry, keep=False)
    report.seconds = 1.5
    writer.finish(report)
    written = json.loads(path.read_text())
    assert written["instances"] == [e.to_json() for e in ENTRIES] and written["skipped"] == 3 and written["seconds"] == 1.5
    assert written["counts"] == {"transcoded": 4, "failed": 1, "kept": 1}
    assert not writer.partial.exists()
