"""Integrity on read (issue 11, class 6): stored bytes that are damaged,
short or missing are never served as valid. Each test works on its own copy
of the served archive and damages it as a disk or an operator would."""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import sqlite3
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import imagecodecs
import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.served import Served
from tests.test_server_live import serve
from transcode.archive import FolderArchive
from transcode.catalog.base import FrameRow, InstanceRow
from transcode.codecs.codestream import CodestreamIndex
from transcode.server import create_app
from transcode.server.errors import StoredDataError
from transcode.server.integrity import UNCHECKED

OHIF = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
UNCOMPRESSED = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
JPHC = "image/jphc"


class Copy:
    """A copy of the served archive, its server, and ways to damage it."""

    def __init__(self, served: Served, root: Path) -> None:
        self.served, self.root = served, root
        shutil.copytree(served.root, root)
        self.archive = FolderArchive(root)
        self.client = TestClient(create_app(self.archive))

    def row(self, modality: str) -> InstanceRow:
        row = self.archive.index.instance(self.served.find(modality)[2])
        assert row is not None
        return row

    def frame(self, row: InstanceRow, number: int) -> FrameRow:
        return self.archive.index.frames(row.sop_uid)[number - 1]

    def path(self, row: InstanceRow) -> Path:
        return self.root / row.path

    def flip(self, row: InstanceRow, at: int, count: int = 8) -> bytes:
        """Invert `count` bytes of the object at `at`; return what was there."""
        with open(self.path(row), "r+b") as f:
            f.seek(at)
            before = f.read(count)
            f.seek(at)
            f.write(bytes(b ^ 0xFF for b in before))
        return before

    def restore(self, row: InstanceRow, at: int, before: bytes) -> None:
        with open(self.path(row), "r+b") as f:
            f.seek(at)
            f.write(before)

    def url(self, row: InstanceRow) -> str:
        return f"/dicomweb/studies/{row.study_uid}/series/{row.series_uid}/instances/{row.sop_uid}"


@pytest.fixture
def copy(served: Served, tmp_path: Path):
    archive = Copy(served, tmp_path / "archive")
    try:
        yield archive
    finally:
        archive.archive.close()


def assert_refused(copy: Copy, response, reason: str) -> None:
    """An error with a reason, nothing a cache keeps, and no path."""
    assert response.status_code == 500, (response.status_code, response.text[:200])
    assert response.json()["error"] == reason, response.text
    assert response.headers["cache-control"] == "no-store"
    assert "etag" not in response.headers
    assert str(copy.root) not in response.text and ".dcm" not in response.text and "objects/" not in response.text


def test_ingest_records_the_frame_digest_each_stored_frame(copy) -> None:
    rows = [row for row in copy.archive.index.instances() if row.outcome == "transcoded"]
    assert len(rows) == 6
    tiled = 0
    for row in rows:
        data = copy.path(row).read_bytes()
        frames = copy.archive.index.frames(row.sop_uid)
        assert len(frames) == row.frames
        for frame in frames:
            stored = data[frame.offset:frame.offset + frame.length]
            assert stored.endswith(b"\xff\xd9")  # the whole codestream, not its fragment's padding
            index = CodestreamIndex.from_dict(frame.codestream)
            ends = [index.level_end(level) for level in range(index.resolutions)]
            # zlib's CRC-32, not the server's own code: each level's prefix, the last the whole frame
            levels, _, pieces = frame.digest.partition("/")
            assert levels == "crc32:" + ",".join(f"{zlib.crc32(stored[:end]):08x}" for end in ends)
            assert ends[-1] == frame.length
            # A tiled frame's main header and each tile-part, for region cut-outs that read only some tiles.
            spans = [(0, index.header_length)] + [(tp.offset, tp.end) for tp in index.tile_parts]
            expected = ",".join(f"{zlib.crc32(stored[a:b]):08x}" for a, b in spans) if index.tiles > 1 else ""
            assert pieces == expected
            tiled += index.tiles > 1
    assert tiled == 1  # the CR


def test_a_damaged_frame_is_refused_wherever_it_would_be_sent(copy, caplog) -> None:
    mr = copy.row("MR")  # 5 frames
    frame = copy.frame(mr, 2)
    index = CodestreamIndex.from_dict(frame.codestream)
    at = frame.offset + frame.length - 40  # in the last resolution level: outside every smaller level's prefix
    assert at - frame.offset > index.level_end(index.decompositions - 1)
    u = copy.url(mr)
    good = copy.client.get(f"{u}/frames/2", headers={"Accept": JPHC})
    assert good.status_code == 200
    copy.flip(mr, at)
    caplog.set_level(logging.ERROR, logger="transcode.server.integrity")
    for path, accept, extra in [
        ("/frames/2", OHIF, {}),
        ("/frames/2", JPHC, {"Range": "bytes=0-99"}),  # a range of the frame's first bytes, which are intact
        (f"/frames/2?level={index.decompositions}", JPHC, {}),  # the full level
        ("/frames/2", UNCOMPRESSED, {}),  # decoded
        ("/frames/2,3", OHIF, {}),  # a multipart body that would start with it
        ("/frames/2/rendered", "image/png", {}),
        ("/frames/2/thumbnail", "image/jpeg", {}),
        ("", "application/dicom", {}),  # the instance
        ("", None, {}),  # multipart
    ]:
        headers = {"Accept": accept, **extra} if accept else {}
        assert_refused(copy, copy.client.get(u + path, headers=headers), "integrity_error")
    series = copy.client.get(f"/dicomweb/studies/{mr.study_uid}/series/{mr.series_uid}")  # the MR alone in its series
    assert_refused(copy, series, "integrity_error")
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert logged and all(str(copy.path(mr)) in m for m in logged)  # the log names the object
    # the other frames are whole and served as before
    r = copy.client.get(f"{u}/frames/1", headers={"Accept": JPHC})
    assert r.status_code == 200 and r.headers["cache-control"] == "private, max-age=31536000, immutable"
    source = copy.served.source(mr.sop_uid).pixel_array
    np.testing.assert_array_equal(imagecodecs.htj2k_decode(r.content), source[0])
    assert copy.client.get(f"{u}/frames/1/rendered").status_code == 200
    # a level prefix holds only the bytes checked for it: frame 2's lower levels are intact and served
    low = copy.client.get(f"{u}/frames/2?level={index.decompositions - 1}", headers={"Accept": JPHC})
    assert low.status_code == 200
    assert low.content == good.content[:index.level_end(index.decompositions - 1)] + b"\xff\xd9"
    # damage inside frame 3's level-0 prefix: every level of it is refused
    third = copy.frame(mr, 3)
    copy.flip(mr, third.offset + CodestreamIndex.from_dict(third.codestream).level_end(0) - 12)
    for level in range(index.resolutions):
        assert_refused(copy, copy.client.get(f"{u}/frames/3?level={level}", headers={"Accept": JPHC}),
                       "integrity_error")


def test_the_etag_belongs_to_the_recorded_frame(copy) -> None:
    """Refusals carry no ETag; once the bytes are repaired the frame is
    served again with the ETag it had: the one of its recorded digest."""
    ct = copy.row("CT")
    frame = copy.frame(ct, 1)
    u = f"{copy.url(ct)}/frames/1"
    before = copy.client.get(u, headers={"Accept": OHIF})
    original = copy.flip(ct, frame.offset + frame.length // 2)
    assert_refused(copy, copy.client.get(u, headers={"Accept": OHIF}), "integrity_error")
    copy.restore(ct, frame.offset + frame.length // 2, original)
    after = copy.client.get(u, headers={"Accept": OHIF})
    assert after.status_code == 200 and after.headers["etag"] == before.headers["etag"]
    assert after.content == before.content
    others = {copy.client.get(f"{copy.url(copy.row('MR'))}/frames/{n}", headers={"Accept": OHIF}).headers["etag"]
              for n in (1, 2, 3)}
    assert len(others) == 3


def test_a_damaged_frame_later_in_a_stream_aborts_it(copy) -> None:
    """Frame 1 is whole and goes out; frame 2 is damaged: the response
    cannot become an error any more, so it is broken off."""
    mr = copy.row("MR")
    frame = copy.frame(mr, 2)
    copy.flip(mr, frame.offset + 10)
    for path in ("/frames/1,2,3", "/bulkdata/7FE00010"):
        with pytest.raises(RuntimeError, match="response already started") as raised:
            copy.client.get(copy.url(mr) + path, headers={"Accept": OHIF})
        assert isinstance(raised.value.__cause__, StoredDataError) and "frame 2" in str(raised.value.__cause__)


def test_a_client_sees_a_broken_transfer_not_a_complete_body(copy) -> None:
    """Over real HTTP: the second of three CT instances is damaged, so the
    series retrieve ends without its closing boundary and chunk."""
    ct = sorted((r for r in copy.archive.index.instances() if r.series_uid == copy.row("CT").series_uid),
                key=lambda r: json.loads(r.dicom_json)["00200013"]["Value"][0])  # in the order they are sent
    assert len(ct) == 3
    copy.flip(ct[1], ct[1].size - 100)
    for base in serve(copy.archive):
        where = urlsplit(base)
        conn = http.client.HTTPConnection(where.hostname, where.port)
        conn.request("GET", f"{where.path}/studies/{ct[0].study_uid}/series/{ct[0].series_uid}")
        response = conn.getresponse()
        assert response.status == 200  # the first instance was whole
        with pytest.raises(http.client.IncompleteRead):
            response.read()
        conn.close()


def test_a_missing_object_is_an_error_without_its_path(copy) -> None:
    ct = copy.row("CT")
    copy.path(ct).unlink()
    u = copy.url(ct)
    assert_refused(copy, copy.client.get(f"{u}/frames/1", headers={"Accept": OHIF}), "object_missing")
    assert_refused(copy, copy.client.get(f"{u}/frames/1?level=0", headers={"Accept": JPHC}), "object_missing")
    assert_refused(copy, copy.client.get(u, headers={"Accept": "application/dicom"}), "object_missing")
    assert_refused(copy, copy.client.get(u), "object_missing")
    assert_refused(copy, copy.client.get(f"{u}/bulkdata/00100010"), "object_missing")
    # /rendered reads the header first, through pydicom: an internal error, its text in the log only
    rendered = TestClient(copy.client.app, raise_server_exceptions=False).get(f"{u}/rendered")
    assert rendered.status_code == 500 and str(copy.root) not in rendered.text and ".dcm" not in rendered.text


def test_a_truncated_object_is_an_error_never_a_short_body(copy) -> None:
    mr = copy.row("MR")
    frame = copy.frame(mr, 3)
    os.truncate(copy.path(mr), frame.offset + frame.length // 2)
    u = copy.url(mr)
    assert_refused(copy, copy.client.get(f"{u}/frames/3", headers={"Accept": OHIF}), "object_truncated")
    assert_refused(copy, copy.client.get(u, headers={"Accept": "application/dicom"}), "object_truncated")
    assert copy.client.get(f"{u}/frames/1", headers={"Accept": OHIF}).status_code == 200  # whole, and proved so
    us = copy.row("US")
    kept = next(r for r in copy.archive.index.instances() if r.series_uid == us.series_uid and r.outcome == "kept")
    os.truncate(copy.path(kept), kept.size - 10)
    assert_refused(copy, copy.client.get(f"{copy.url(kept)}/frames/1", headers={"Accept": "image/jpeg"}),
                   "object_truncated")


def test_an_instance_kept_as_is_is_proved_whole(copy) -> None:
    """The kept JPEG has no frames rows: its object is checked against the
    object digest before its frames are read from it; a failure is not
    remembered, so the repaired object is served again."""
    us = copy.row("US")
    kept = next(r for r in copy.archive.index.instances() if r.series_uid == us.series_uid and r.outcome == "kept")
    u = copy.url(kept)
    at = kept.size - 200  # inside the JPEG frame, the last element
    original = copy.flip(kept, at)
    assert_refused(copy, copy.client.get(f"{u}/frames/1", headers={"Accept": "image/jpeg"}), "integrity_error")
    assert_refused(copy, copy.client.get(f"{u}/frames/1", headers={"Accept": UNCOMPRESSED}), "integrity_error")
    assert_refused(copy, copy.client.get(f"{u}/rendered"), "integrity_error")
    copy.restore(kept, at, original)
    assert copy.client.get(f"{u}/frames/1", headers={"Accept": "image/jpeg"}).status_code == 200


def test_a_proved_object_replaced_by_a_damaged_one_is_proved_again(copy) -> None:
    us = copy.row("US")
    kept = next(r for r in copy.archive.index.instances() if r.series_uid == us.series_uid and r.outcome == "kept")
    u = f"{copy.url(kept)}/frames/1"
    assert copy.client.get(u, headers={"Accept": "image/jpeg"}).status_code == 200
    data = bytearray(copy.path(kept).read_bytes())
    data[-200:-192] = bytes(8)
    staged = copy.path(kept).with_suffix(".new")
    staged.write_bytes(data)
    os.replace(staged, copy.path(kept))  # another file (inode) at the same path
    assert_refused(copy, copy.client.get(u, headers={"Accept": "image/jpeg"}), "integrity_error")


def test_an_index_from_before_frame_digests_still_opens_and_is_checked(copy, served, tmp_path) -> None:
    """Frames without a recorded digest are checked against their object's
    digest instead."""
    copy.archive.close()
    old = tmp_path / "old"
    shutil.copytree(served.root, old)
    with sqlite3.connect(old / "index.sqlite") as db:
        db.execute("ALTER TABLE frames DROP COLUMN digest")
    with FolderArchive(old) as archive:
        assert all(f.digest is None for r in archive.index.instances() for f in archive.index.frames(r.sop_uid))
        client = TestClient(create_app(archive))
        mr = archive.index.instance(served.find("MR")[2])
        frame = archive.index.frames(mr.sop_uid)[1]
        u = f"/dicomweb/studies/{mr.study_uid}/series/{mr.series_uid}/instances/{mr.sop_uid}"
        assert client.get(f"{u}/frames/2", headers={"Accept": OHIF}).status_code == 200
        with open(old / mr.path, "r+b") as f:
            f.seek(frame.offset + 10)
            f.write(b"\0" * 8)
        os.utime(old / mr.path, ns=(1, 1))  # a file state not seen before, whatever the clock's resolution
        r = client.get(f"{u}/frames/2", headers={"Accept": OHIF})
        assert r.status_code == 500 and r.json()["error"] == "integrity_error"


def test_checks_can_be_turned_off_for_benchmarks_only(copy, served, monkeypatch) -> None:
    """The switch the server benchmark uses to measure what checking costs."""
    monkeypatch.setenv(UNCHECKED, "1")
    client = TestClient(create_app(copy.archive))
    ct = copy.row("CT")
    frame = copy.frame(ct, 1)
    copy.flip(ct, frame.offset + frame.length // 2)
    assert client.get(f"{copy.url(ct)}/frames/1", headers={"Accept": OHIF}).status_code == 200
    assert_refused(copy, copy.client.get(f"{copy.url(ct)}/frames/1", headers={"Accept": OHIF}), "integrity_error")
