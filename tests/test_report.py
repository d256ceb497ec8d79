"""The ingest's progress lines and their running totals."""

from __future__ import annotations

import io

from transcode.pipeline import IngestReport
from transcode.report import Progress


def test_log_lines_carry_running_totals() -> None:
    """Off a terminal: a line when due and at the end, with the files,
    frames and megabytes of every entry so far, counted once each."""
    stream = io.StringIO()
    progress = Progress(stream, every=3600.0)
    report = IngestReport()
    sizes = [(1, 2_000_000), (69, 640_000_000), (None, 500_000), (1, 1_500_000)]  # a failed file has no frames
    for done, (frames, size) in enumerate(sizes, 1):
        report.entries.append({"outcome": "transcoded", "frames": frames, "bytes_in": size})
        progress(report, done, len(sizes))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # the first file (none printed before) and the last
    assert lines[0].startswith("ingest: 1/4 files, 1 frames, 2.0 MB,")
    assert lines[1].startswith("ingest: 4/4 files, 71 frames, 644.0 MB,")
