"""Memory is bounded by the frame size, not by the number of frames of an
instance (issue 12): the same tomosynthesis frames, 8 or 69 of them, through
`transcode ingest --workers 1`, peak within 40 MB of each other (all
processes together). Before `runtime.release_freed`, glibc's heap kept the
holes that frames, tiles and codestreams of varying sizes leave, and the
peak grew by 43-66 MB."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fixtures.generate import write_dbt
from transcode.bench.measure import peak_rss


@pytest.mark.slow
def test_ingest_peak_does_not_grow_with_the_frame_count(tmp_path: Path) -> None:
    peaks = {}
    for frames in (8, 69):
        src = write_dbt(tmp_path / f"dbt-{frames}.dcm", frames=frames)
        _, peaks[frames] = peak_rss([sys.executable, "-m", "transcode.cli", "ingest", str(src),
                                     "--archive", str(tmp_path / f"archive-{frames}"), "--workers", "1"])
        src.unlink()
    assert peaks[69] - peaks[8] <= 40e6, peaks
