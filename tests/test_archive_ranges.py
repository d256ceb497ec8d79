"""Archive.read_ranges: several byte ranges of one object in one call."""

from __future__ import annotations

import os

import pytest

from transcode.archive import FolderArchive
from transcode.archive.store import Archive, ByteRange


@pytest.fixture
def archive(tmp_path):
    with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
        staged = archive.staging() / "object"
        staged.write_bytes(os.urandom(10_000))
        archive.place(staged, "1.2/3.4/5.6.dcm")
        archive.flush()
        yield archive


@pytest.mark.parametrize("backend", ["folder", "default"])
def test_each_range_is_the_bytes_a_plain_read_gives(archive, backend: str) -> None:
    whole = archive.read("1.2/3.4/5.6.dcm")
    ranges = [ByteRange(0, 10), ByteRange(5, 5), ByteRange(9_000, 10_000), ByteRange(100, 4_196)]
    read = archive.read_ranges if backend == "folder" else (lambda rel, rs: Archive.read_ranges(archive, rel, rs))
    assert [bytes(b) for b in read("1.2/3.4/5.6.dcm", ranges)] == [whole[r.start:r.end] for r in ranges]


@pytest.mark.parametrize("backend", ["folder", "default"])
def test_a_range_past_the_end_is_an_eof_error(archive, backend: str) -> None:
    read = archive.read_ranges if backend == "folder" else (lambda rel, rs: Archive.read_ranges(archive, rel, rs))
    with pytest.raises(EOFError):
        read("1.2/3.4/5.6.dcm", [ByteRange(0, 10), ByteRange(9_990, 10_001)])


def test_ranges_are_checked() -> None:
    with pytest.raises(ValueError):
        ByteRange(5, 4)
    with pytest.raises(ValueError):
        ByteRange(-1, 4)
