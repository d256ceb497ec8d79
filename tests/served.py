"""A small archive to serve in the server tests, and an independent reader
of multipart/related bodies (not the server's own code)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.uid import JPEGBaseline8Bit, RLELossless, generate_uid

from fixtures.generate import Spec, dataset
from transcode.archive import FolderArchive
from transcode.archive.store import ByteRange
from transcode.codecs.htj2k import EncodeSettings
from transcode.pipeline import ingest

#: Tiles of 128 pixels above 256, so that a 600 x 500 frame is tiled (20 tiles).
TILED = EncodeSettings(tile_threshold=256, tile_size=128)


class CountingArchive(FolderArchive):
    """A folder archive that records every byte range read, one list per call."""

    calls: list[list[tuple[int, int]]]

    def read_into(self, relative: str, start: int, view: memoryview) -> None:
        self.calls.append([(start, start + len(view))])
        super().read_into(relative, start, view)

    def read_ranges(self, relative: str, ranges: Sequence[ByteRange]) -> list[bytearray]:
        self.calls.append([(r.start, r.end) for r in ranges])
        return super().read_ranges(relative, ranges)


@dataclass
class Served:
    root: Path
    sources: dict[str, Path] = field(default_factory=dict)  # SOP Instance UID -> source file
    study_a: str = ""
    study_b: str = ""

    def source(self, sop: str) -> pydicom.Dataset:
        return pydicom.dcmread(self.sources[sop])

    def find(self, modality: str) -> tuple[str, str, str]:
        """(study, series, sop) of the first instance of `modality`."""
        for sop, path in sorted(self.sources.items(), key=lambda kv: str(kv[1])):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            if ds.Modality == modality:
                return ds.StudyInstanceUID, ds.SeriesInstanceUID, sop
        raise KeyError(modality)


def _save(spec: Spec, path: Path, *, study: str, series: str, number: int, **attrs: object) -> pydicom.Dataset:
    ds = dataset(spec, study=study, series=series, number=number)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


def build(root: Path) -> Served:
    """Study A: a CT series of 3 (signed 12-bit, window 40/400), a 5-frame
    RLE MR, a 2-frame RGB US, a lossy JPEG US (kept as is). Study B, another
    patient: one 600 x 500 CR frame, tiled."""
    served = Served(root / "archive", study_a=generate_uid(), study_b=generate_uid())
    src = root / "source"
    a = served.study_a
    ct, mr, us = generate_uid(), generate_uid(), generate_uid()
    plan = [
        *[(Spec("CT", 96, 128, 1, 16, 12, signed=True, seed=i), f"a/ct/{i}.dcm", a, ct, i, {}) for i in (1, 2, 3)],
        (Spec("MR", 80, 64, 5, 16, 12, transfer_syntax=RLELossless, seed=10), "a/mr.dcm", a, mr, 1, {}),
        (Spec("US", 60, 80, 2, 8, 8, samples=3, photometric="RGB", seed=11), "a/us/1.dcm", a, us, 1, {}),
        (Spec("US", 64, 64, 1, 8, 8, samples=3, photometric="YBR_FULL_422", transfer_syntax=JPEGBaseline8Bit,
              seed=12), "a/us/2.dcm", a, us, 2, {}),
    ]
    for spec, name, study, series, number, attrs in plan:
        ds = _save(spec, src / name, study=study, series=series, number=number, **attrs)
        served.sources[ds.SOPInstanceUID] = src / name
    ds = _save(Spec("CR", 600, 500, 1, 16, 10, seed=13), src / "b/cr.dcm", study=served.study_b,
               series=generate_uid(), number=1, PatientName="Other^Person", PatientID="PID-0002",
               StudyDate="20250505", AccessionNumber="ACC-0002", StudyDescription="Chest [PA]")
    served.sources[ds.SOPInstanceUID] = src / "b/cr.dcm"
    with FolderArchive(served.root, exclusive=True) as archive:
        report = ingest([src / "a"], archive, workers=1)
        report.entries += ingest([src / "b"], archive, workers=1, settings=TILED).entries
    outcomes = sorted(e["outcome"] for e in report.entries)
    assert outcomes == ["kept"] + ["transcoded"] * 6, report.entries
    return served


def multipart_parts(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """(headers, payload) of each part, by RFC 2046 framing."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    assert match, content_type
    delimiter = b"--" + match.group(1).encode()
    assert body.startswith(delimiter + b"\r\n"), body[:80]
    assert body.endswith(delimiter + b"--\r\n"), body[-80:]
    parts = []
    for segment in body[len(delimiter):-len(delimiter) - 6].split(b"\r\n" + delimiter):
        head, _, payload = segment.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        parts.append((headers, payload))
    return parts
