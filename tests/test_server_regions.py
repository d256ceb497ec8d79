"""`frames/{n}/region`: cut-out codestreams and decoded regions over HTTP.

The served CR is 500 columns x 600 rows, tiled 128 x 128 (4 x 5 tiles), 4
decompositions.
Pixels are compared with pydicom's decode of the source (full resolution)
and with OpenJPH's decode of the whole stored frame at a level (reduced).
"""

from __future__ import annotations

import io
import sqlite3
import struct
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.served import Served
from tests.test_server_integrity import Copy
from tests.test_server_render import linear_window
from transcode.archive import FolderArchive
from transcode.archive.check import verify_archive
from transcode.codecs import htj2k
from transcode.codecs.codestream import CodestreamIndex
from transcode.server import create_app

AS_STORED = "application/octet-stream; transfer-syntax=*"
DECODED = "application/octet-stream"


@pytest.fixture(scope="module")
def cr(served: Served, counting_archive):
    study, series, sop = served.find("CR")
    row = counting_archive.index.instance(sop)
    frame = counting_archive.index.frames(sop)[0]
    stored = counting_archive.read(row.path, frame.offset, frame.offset + frame.length)
    url = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/1/region"
    return url, served.source(sop).pixel_array, stored, CodestreamIndex.from_dict(frame.codestream), frame


def siz_area(data: bytes) -> tuple[int, int, int, int]:
    xsiz, ysiz, xo, yo = struct.unpack_from(">4I", data, 8)
    return xo, yo, xsiz, ysiz


@pytest.mark.parametrize("box", [(0, 0, 1, 1), (130, 200, 300, 100), (499, 599, 1, 1), (0, 0, 500, 600)])
def test_as_stored_a_cut_out_of_the_covering_tiles(counting_client, cr, box) -> None:
    url, source, *_ = cr
    x, y, w, h = box
    response = counting_client.get(url, params={"x": x, "y": y, "w": w, "h": h}, headers={"Accept": AS_STORED})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.202"
    x0, y0, x1, y1 = siz_area(response.content)
    assert x0 == x // 128 * 128 and y0 == y // 128 * 128
    assert x1 == min(-(-(x + w) // 128) * 128, 500) and y1 == min(-(-(y + h) // 128) * 128, 600)
    np.testing.assert_array_equal(imagecodecs.htj2k_decode(response.content), source[y0:y1, x0:x1])


@pytest.mark.parametrize("level", [0, 2, 3])
def test_a_cut_out_at_a_level_decodes_to_that_level_of_the_frame(counting_client, cr, level: int) -> None:
    url, _, stored, index, _ = cr
    response = counting_client.get(url, params={"x": 250, "y": 130, "w": 100, "h": 250, "level": level},
                          headers={"Accept": AS_STORED})
    assert response.status_code == 200, response.text
    r = index.decompositions - level
    whole = htj2k.decode(stored, level=level, decompositions=index.decompositions)
    x0, y0, x1, y1 = (-(-v >> r) for v in siz_area(response.content))
    got = htj2k.decode(response.content, level=level, decompositions=index.decompositions)
    np.testing.assert_array_equal(got, whole[y0:y1, x0:x1])
    assert len(response.content) < len(stored[: index.level_end(level)])


def test_decoded_regions_are_the_source_window_or_its_level(counting_client, cr) -> None:
    url, source, stored, index, _ = cr
    response = counting_client.get(url, params={"x": 77, "y": 301, "w": 250, "h": 99}, headers={"Accept": DECODED})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    np.testing.assert_array_equal(np.frombuffer(response.content, "<u2").reshape(99, 250), source[301:400, 77:327])
    level = 2  # 1/4 size: the pixels covering the region there, floor of the start to ceiling of the end
    response = counting_client.get(url, params={"x": 77, "y": 301, "w": 250, "h": 99, "level": level},
                          headers={"Accept": DECODED})
    whole = htj2k.decode_reduced(stored, level=level, decompositions=index.decompositions, bits=10)
    expected = whole[301 // 4:-(-400 // 4), 77 // 4:-(-327 // 4)]
    np.testing.assert_array_equal(np.frombuffer(response.content, "<u2").reshape(expected.shape), expected)


def test_only_the_tile_parts_of_the_region_are_read_in_one_call(counting_client, cr, counting_archive) -> None:
    url, _, _, index, frame = cr
    counting_archive.calls = []
    response = counting_client.get(url, params={"x": 130, "y": 130, "w": 120, "h": 120, "level": 3},
                          headers={"Accept": AS_STORED})
    assert response.status_code == 200
    assert len(counting_archive.calls) == 1  # one multi-range read
    wanted = [tp for tp in index.tile_parts if tp.tile == 5 and tp.part <= 3]  # tile (1, 1) of a 4-wide grid
    read = counting_archive.calls[0]
    assert read[0] == (frame.offset, frame.offset + index.header_length)
    assert read[1:] == [(frame.offset + tp.offset, frame.offset + tp.end) for tp in wanted]
    assert sum(b - a for a, b in read) < frame.length // 10


@pytest.mark.parametrize(("params", "status", "reason"), [
    ({"x": 0, "y": 0, "w": 501, "h": 1}, 400, "bad_region"),
    ({"x": -1, "y": 0, "w": 1, "h": 1}, 400, "bad_region"),
    ({"x": 0, "y": 0, "w": 0, "h": 1}, 400, "bad_region"),
    ({"x": 0, "y": 0, "w": 1, "h": 1, "level": 5}, 400, "no_such_level"),
    ({"x": 0, "y": 0, "w": 1}, 400, "bad_request"),
])
def test_bad_regions_are_400_with_a_reason(counting_client, cr, params, status: int, reason: str) -> None:
    response = counting_client.get(cr[0], params=params, headers={"Accept": AS_STORED})
    assert response.status_code == status and response.json()["error"] == reason, response.text


def test_an_instance_kept_as_is_has_no_cut_outs_but_decoded_regions(counting_client, served: Served) -> None:
    kept = next(sop for sop, path in served.sources.items() if path.name == "2.dcm" and "us" in str(path))
    study, series = served.source(kept).StudyInstanceUID, served.source(kept).SeriesInstanceUID
    url = f"/dicomweb/studies/{study}/series/{series}/instances/{kept}/frames/1/region"
    refused = counting_client.get(url, params={"x": 0, "y": 0, "w": 8, "h": 8}, headers={"Accept": AS_STORED})
    assert refused.status_code == 400 and refused.json()["error"] == "no_regions"
    decoded = counting_client.get(url, params={"x": 4, "y": 8, "w": 8, "h": 4}, headers={"Accept": DECODED})
    assert decoded.status_code == 200 and len(decoded.content) == 8 * 4 * 3


def test_damage_inside_the_region_is_refused_and_outside_it_is_not_read(served: Served, tmp_path: Path) -> None:
    copy = Copy(served, tmp_path / "archive")
    try:
        row = copy.row("CR")
        frame = copy.frame(row, 1)
        index = CodestreamIndex.from_dict(frame.codestream)
        url = copy.url(row) + "/frames/1/region"
        last = index.tile_parts[-1]  # the last tile's full-resolution tile-part
        copy.flip(row, frame.offset + last.offset + 40)
        inside = copy.client.get(url, params={"x": 499, "y": 599, "w": 1, "h": 1}, headers={"Accept": AS_STORED})
        assert inside.status_code == 500 and inside.json()["error"] == "integrity_error"
        outside = copy.client.get(url, params={"x": 0, "y": 0, "w": 300, "h": 300}, headers={"Accept": AS_STORED})
        assert outside.status_code == 200
    finally:
        copy.archive.close()


def test_frames_indexed_without_tile_part_checksums_are_checked_by_their_prefix(served: Served, tmp_path: Path) -> None:
    copy = Copy(served, tmp_path / "archive")
    copy.archive.close()  # an index as written before tile-part checksums existed
    with sqlite3.connect(copy.root / "index.sqlite") as db:
        db.execute("UPDATE frames SET digest = substr(digest, 1, instr(digest, '/') - 1) WHERE digest LIKE '%/%'")
    copy.archive = FolderArchive(copy.root)
    copy.client = TestClient(create_app(copy.archive))
    try:
        assert verify_archive(copy.archive) == []  # still whole for `transcode verify`
        row = copy.row("CR")
        frame = copy.frame(row, 1)
        assert "/" not in frame.digest
        index = CodestreamIndex.from_dict(frame.codestream)
        url = copy.url(row) + "/frames/1/region"
        params = {"x": 0, "y": 0, "w": 10, "h": 10, "level": 2}
        good = copy.client.get(url, params=params, headers={"Accept": AS_STORED})
        assert good.status_code == 200
        # A tile the region does not use, inside the level prefix read to check it: refused.
        other = next(tp for tp in index.tile_parts if tp.tile == index.tiles - 1 and tp.part == 2)
        copy.flip(row, frame.offset + other.offset + 20)
        assert copy.client.get(url, params=params, headers={"Accept": AS_STORED}).json()["error"] == "integrity_error"
    finally:
        copy.archive.close()


def test_rendered_viewport_source_regions_read_only_their_tiles_and_levels(counting_client, cr, counting_archive) -> None:
    url, source, _, _, frame = cr
    rendered = url.replace("/region", "/rendered")
    counting_archive.calls = []
    one_to_one = counting_client.get(rendered, params={"viewport": "200,100,260,130,200,100", "accept": "image/png"})
    assert one_to_one.status_code == 200, one_to_one.text
    values = source[130:230, 260:460].astype(np.float64)  # no VOI in the data set: the region's own range
    low, high = values.min(), values.max()
    expected = linear_window(values, (low + high + 1) / 2, high - low + 1)
    got = np.asarray(Image.open(io.BytesIO(one_to_one.content)))
    assert got.shape == (100, 200) and np.abs(got - expected).max() <= 1
    full_read = sum(b - a for call in counting_archive.calls for a, b in call if a >= frame.offset)
    assert full_read < frame.length // 2
    counting_archive.calls = []
    small = counting_client.get(rendered, params={"viewport": "50,25,256,128,200,100", "accept": "image/png"})
    assert np.asarray(Image.open(io.BytesIO(small.content))).shape == (25, 50)
    assert sum(b - a for call in counting_archive.calls for a, b in call if a >= frame.offset) < full_read // 4
    defaults = counting_client.get(rendered, params={"viewport": "100,100,400,500,,", "accept": "image/png"})
    assert np.asarray(Image.open(io.BytesIO(defaults.content))).shape == (100, 100)  # 100 x 100 to the corner


def test_thumbnails_of_8_bit_colour_frames_have_no_wrapped_edges(tmp_path: Path) -> None:
    """A bright square on black, RGB 8 bits: at reduced levels the wavelet
    overshoots below 0 on the square's edges, which OpenJPH wraps to 250+."""
    from pydicom import dcmread

    from transcode.bench.dataset import write_instance
    from transcode.pipeline import ingest

    frame = np.zeros((192, 256, 3), np.uint8)
    frame[61:131, 77:171] = (255, 240, 230)
    (tmp_path / "src").mkdir()
    source = write_instance(frame, 8, tmp_path / "src" / "rgb.dcm")
    ds = dcmread(source)
    with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
        ingest([source], archive, workers=1)
    with FolderArchive(tmp_path / "archive") as archive:
        row, stored = archive.index.instance(ds.SOPInstanceUID), archive.index.frames(ds.SOPInstanceUID)[0]
        data = archive.read(row.path, stored.offset, stored.offset + stored.length)
        index = CodestreamIndex.from_dict(stored.codestream)
        client = TestClient(create_app(archive))
        url = (f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
               f"{ds.SOPInstanceUID}/frames/1")
        wraps = False
        for level in range(index.decompositions):
            plain = htj2k.decode(data, level=level, decompositions=index.decompositions)
            scale = 1 << (index.decompositions - level)
            h, w = plain.shape[:2]
            region = client.get(url + "/region", params={"x": 0, "y": 0, "w": 256, "h": 192, "level": level},
                                headers={"Accept": DECODED})
            got = np.frombuffer(region.content, np.uint8).reshape(h, w, 3)
            dark = np.zeros((h, w), bool)  # where the whole block of source pixels is black
            for y in range(h):
                for x in range(w):
                    dark[y, x] = not frame[y * scale:(y + 1) * scale, x * scale:(x + 1) * scale].any()
            assert got[dark].max() < 64, level  # was 250+ where OpenJPH wrapped
            wraps |= bool((plain[dark] > 200).any())
        assert wraps  # the frame does make OpenJPH wrap: the clamp was needed
        thumbnail = client.get(url + "/thumbnail", params={"accept": "image/png"})
        assert thumbnail.status_code == 200
        shown = np.asarray(Image.open(io.BytesIO(thumbnail.content)))
        assert shown[:10, :10].max() < 64 and shown[-10:, -10:].max() < 64
