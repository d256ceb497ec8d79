"""Outputs are written as any other program's files would be."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pydicom.uid import JPEGBaseline8Bit

from fixtures.generate import Spec, write
from transcode import Outcome, transcode_file


def test_outputs_get_the_mode_the_umask_gives(tmp_path: Path) -> None:
    """dcmtk and GDCM write 0644 under umask 022; a 0600 output (mkstemp's)
    is unreadable to the PACS service account that picks it up."""
    transcoded, kept = write(Spec("CT", 32, 32), tmp_path / "ct.dcm"), write(
        Spec("US", 32, 32, 1, 8, 8, samples=3, photometric="YBR_FULL_422", transfer_syntax=JPEGBaseline8Bit),
        tmp_path / "us.dcm")
    results = [transcode_file(src, tmp_path / f"out-{src.name}") for src in (transcoded, kept)]
    assert [r.outcome for r in results] == [Outcome.TRANSCODED, Outcome.KEPT]
    umask = os.umask(0o022)
    os.umask(umask)
    for result in results:
        assert stat.S_IMODE(Path(result.destination).stat().st_mode) == 0o666 & ~umask != 0o600
