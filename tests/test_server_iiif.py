"""IIIF Image API 3.0: info.json, and the tiles OpenSeadragon asks for.

`osd_tile_urls` computes tile URLs the way OpenSeadragon 4/5's
IIIFTileSource does for a level-1 service with `tiles` (getTileUrl with
levels from the scale factors, level sizes rounded up); each tile must be
the matching window of the frame: pydicom's decode of the source at full
resolution, OpenJPH's decode of the whole stored frame at reduced levels.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.served import Served
from tests.test_server_render import linear_window
from transcode.codecs import htj2k
from transcode.codecs.codestream import CodestreamIndex
from transcode.server import create_app


def base(served: Served, modality: str) -> str:
    study, series, sop = served.find(modality)
    return f"/iiif/studies/{study}/series/{series}/instances/{sop}/frames/1"


def osd_tile_urls(info: dict) -> list[tuple[int, str, tuple[int, int, int, int]]]:
    """(scale factor, URL, (x, y, w, h) of the level's pixels) of every tile
    OpenSeadragon shows when zoomed through every level."""
    width, height = info["width"], info["height"]
    tiles = info["tiles"][0]
    tile_w, tile_h = tiles["width"], tiles["height"]
    max_level = round(math.log2(max(tiles["scaleFactors"])))
    out = []
    for level in range(max_level + 1):
        scale = 0.5 ** (max_level - level)
        level_w, level_h = math.ceil(width * scale), math.ceil(height * scale)
        size_w, size_h = round(tile_w / scale), round(tile_h / scale)  # iiifTileSizeWidth
        for y in range(math.ceil(level_h / tile_h)):
            for x in range(math.ceil(level_w / tile_w)):
                if level_w < tile_w and level_h < tile_h:
                    region = "full"
                    size = "max" if (level_w, level_h) == (width, height) else f"{level_w},{level_h}"
                    pixels = (0, 0, level_w, level_h)
                else:
                    tx, ty = x * size_w, y * size_h
                    tw, th = min(size_w, width - tx), min(size_h, height - ty)
                    region = "full" if (x, y, tw, th) == (0, 0, width, height) else f"{tx},{ty},{tw},{th}"
                    sw, sh = min(tile_w, level_w - x * tile_w), min(tile_h, level_h - y * tile_h)
                    size = "max" if (sw, sh) == (width, height) else f"{sw},{sh}"
                    pixels = (x * tile_w, y * tile_h, sw, sh)
                out.append((1 << (max_level - level), f"{info['id']}/{region}/{size}/0/default.png", pixels))
    return out


def test_info_json_describes_the_stored_tiles_and_levels(counting_client, served: Served, counting_archive) -> None:
    response = counting_client.get(base(served, "CR") + "/info.json")
    assert response.status_code == 200, response.text
    info = response.json()
    sop = served.find("CR")[2]
    index = CodestreamIndex.from_dict(counting_archive.index.frames(sop)[0].codestream)
    assert info["@context"] == "http://iiif.io/api/image/3/context.json"
    assert info["id"] == "http://testserver" + base(served, "CR")
    assert (info["type"], info["protocol"], info["profile"]) == ("ImageService3", "http://iiif.io/api/image", "level1")
    assert (info["width"], info["height"]) == (500, 600)
    assert info["tiles"] == [{"width": 128, "height": 128, "scaleFactors": [1, 2, 4, 8, 16]}]
    assert info["sizes"] == [{"width": -(-500 // (1 << r)), "height": -(-600 // (1 << r))}
                             for r in range(index.decompositions, -1, -1)]
    ld = counting_client.get(base(served, "CR") + "/info.json", headers={"Accept": "application/ld+json"})
    assert ld.headers["content-type"].startswith("application/ld+json")


def test_the_base_uri_redirects_to_info_json(counting_client, served: Served) -> None:
    response = counting_client.get(base(served, "CR"), follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "http://testserver" + base(served, "CR") + "/info.json"


def test_untiled_frames_are_one_tile(counting_client, served: Served) -> None:
    info = counting_client.get(base(served, "CT") + "/info.json").json()
    assert info["tiles"][0]["width"] == 128 and info["tiles"][0]["height"] == 96
    assert info["extraQualities"] == ["gray"]
    assert "color" in counting_client.get(base(served, "US") + "/info.json").json()["extraQualities"]


def test_every_openseadragon_tile_is_the_matching_window(counting_client, served: Served, counting_archive) -> None:
    sop = served.find("CR")[2]
    info = counting_client.get(base(served, "CR") + "/info.json").json()
    row, frame = counting_archive.index.instance(sop), counting_archive.index.frames(sop)[0]
    stored = counting_archive.read(row.path, frame.offset, frame.offset + frame.length)
    index = CodestreamIndex.from_dict(frame.codestream)
    source = served.source(sop).pixel_array
    lowest = htj2k.decode_reduced(stored, level=0, decompositions=index.decompositions, bits=10)
    low, high = float(lowest.min()), float(lowest.max())  # no VOI in the data set: one window for the frame
    center, width = (low + high + 1) / 2, high - low + 1
    urls = osd_tile_urls(info)
    assert len(urls) == 4 * 5 + 2 * 3 + 1 * 2 + 1 + 1
    for scale, url, (x, y, w, h) in urls:
        response = counting_client.get(url.removeprefix("http://testserver"))
        assert response.status_code == 200, (url, response.text)
        assert response.headers["content-type"] == "image/png"
        got = np.asarray(Image.open(io.BytesIO(response.content)))
        if scale == 1:
            raw = source[y:y + h, x:x + w]
        else:
            level = index.decompositions - int(math.log2(scale))
            raw = htj2k.decode_reduced(stored, level=level, decompositions=index.decompositions, bits=10)[
                y:y + h, x:x + w]
        expected = np.rint(linear_window(raw.astype(np.float64), center, width))
        assert got.shape == (h, w), url
        assert np.abs(got.astype(np.float64) - expected).max() <= 1, url


def test_a_tile_reads_only_its_tile_parts(counting_client, served: Served, counting_archive) -> None:
    sop = served.find("CR")[2]
    frame = counting_archive.index.frames(sop)[0]
    counting_archive.calls = []
    assert counting_client.get(base(served, "CR") + "/256,256,128,128/128,128/0/default.jpg").status_code == 200
    read = [span for call in counting_archive.calls for span in call]
    frame_reads = [(a, b) for a, b in read if frame.offset <= a < frame.offset + frame.length]
    assert sum(b - a for a, b in frame_reads) < frame.length // 10


def test_colour_tiles_and_gray(counting_client, served: Served) -> None:
    sop = served.find("US")[2]
    source = served.source(sop).pixel_array[0]  # 2 frames of 60 x 80 RGB
    got = np.asarray(Image.open(io.BytesIO(counting_client.get(base(served, "US") + "/10,20,30,15/max/0/color.png").content)))
    np.testing.assert_array_equal(got, source[20:35, 10:40])
    grey = Image.open(io.BytesIO(counting_client.get(base(served, "US") + "/full/max/0/gray.png").content))
    assert grey.mode == "L" and grey.size == (80, 60)


@pytest.mark.parametrize(("path", "status", "reason"), [
    ("/full/max/90/default.jpg", 501, "unsupported_rotation"),
    ("/full/max/!0/default.jpg", 501, "unsupported_rotation"),
    ("/full/max/0/default.webp", 501, "unsupported_format"),
    ("/full/max/0/bitonal.png", 501, "unsupported_quality"),
    ("/full/max/0/color.png", 400, "bad_quality"),
    ("/full/max/0/default.bmp", 400, "bad_format"),
    ("/600,0,10,10/max/0/default.png", 400, "bad_region"),
    ("/nowhere/max/0/default.png", 400, "bad_region"),
    ("/full/501,/0/default.png", 400, "bad_size"),
    ("/full/pct:0/0/default.png", 400, "bad_size"),
    ("/full/!,10/0/default.png", 400, "bad_size"),
])
def test_bad_requests_are_errors_with_a_reason(counting_client, served: Served, path: str, status: int, reason: str) -> None:
    response = counting_client.get(base(served, "CR") + path)
    assert response.status_code == status and response.json()["error"] == reason, response.text


@pytest.mark.parametrize(("path", "size"), [
    ("/full/250,/0/default.jpg", (250, 300)),
    ("/full/,60/0/default.jpg", (50, 60)),
    ("/full/pct:10/0/default.jpg", (50, 60)),
    ("/full/!100,100/0/default.jpg", (83, 100)),
    ("/square/100,100/0/default.jpg", (100, 100)),
    ("/pct:50,50,50,50/max/0/default.jpg", (250, 300)),
    ("/400,500,200,200/max/0/default.jpg", (100, 100)),  # cropped to the image
    ("/0,0,10,10/^20,20/0/default.jpg", (20, 20)),
])
def test_sizes_and_regions(counting_client, served: Served, path: str, size: tuple[int, int]) -> None:
    response = counting_client.get(base(served, "CR") + path)
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(response.content)).size == size


def test_a_missing_frame_is_404(counting_client, served: Served) -> None:
    response = counting_client.get(base(served, "CR").replace("/frames/1", "/frames/2") + "/info.json")
    assert response.status_code == 404 and response.json()["error"] == "no_such_frame"


def test_a_tomosynthesis_sized_frame_with_default_tiles(tmp_path) -> None:
    """2457 x 1890, 10 bits, 3 frames (the 69-frame object differs only in
    frame count), ingested with the default settings: 1024-pixel tiles, 6
    decompositions. A region of frame 2 and its IIIF tiles match the source."""
    import pydicom

    from fixtures.generate import write_dbt
    from transcode.archive import FolderArchive
    from transcode.pipeline import ingest

    (tmp_path / "src").mkdir()
    source = write_dbt(tmp_path / "src" / "dbt.dcm", frames=3)
    ds = pydicom.dcmread(source)
    with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
        ingest([source], archive, workers=1)
    with FolderArchive(tmp_path / "archive") as archive:
        client = TestClient(create_app(archive))
        frames = ds.pixel_array
        path = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/frames/2"
        info = client.get("/iiif" + path + "/info.json").json()
        assert (info["width"], info["height"]) == (1890, 2457)
        assert info["tiles"] == [{"width": 1024, "height": 1024, "scaleFactors": [1, 2, 4, 8, 16, 32, 64]}]
        # The bottom-right edge tile, at full size and as OpenSeadragon asks for it one level down.
        region = client.get("/dicomweb" + path + "/region", params={"x": 1024, "y": 2048, "w": 866, "h": 409},
                            headers={"Accept": "application/octet-stream"})
        assert region.status_code == 200, region.text
        np.testing.assert_array_equal(np.frombuffer(region.content, "<u2").reshape(409, 866), frames[1, 2048:, 1024:])
        tile = client.get("/iiif" + path + "/0,2048,1890,409/945,205/0/default.png")
        assert tile.status_code == 200, tile.text
        assert Image.open(io.BytesIO(tile.content)).size == (945, 205)
        full = client.get("/iiif" + path + "/1024,0,866,1024/max/0/default.png")
        assert Image.open(io.BytesIO(full.content)).size == (866, 1024)


def test_a_series_manifest_lists_every_frame_as_a_canvas(counting_client, served: Served) -> None:
    """The US series (a 2-frame RGB instance, and a JPEG kept as is): three
    canvases in Instance Number order, each painted by its frame's image
    service, whose info.json and image answer at the canvas's size."""
    study, series, _ = served.find("US")
    url = f"/iiif/studies/{study}/series/{series}/manifest.json"
    answer = counting_client.get(url)
    assert answer.status_code == 200
    manifest = answer.json()
    assert manifest["type"] == "Manifest" and manifest["@context"].endswith("/presentation/3/context.json")
    assert manifest["id"] == f"http://testserver{url}"
    numbers = {sop: pydicom.dcmread(path, stop_before_pixels=True).InstanceNumber
               for sop, path in served.sources.items()}
    services = []
    for canvas in manifest["items"]:
        [page] = canvas["items"]
        [painting] = page["items"]
        assert painting["motivation"] == "painting" and painting["target"] == canvas["id"]
        [service] = painting["body"]["service"]
        assert service["type"] == "ImageService3" and service["profile"] == "level1"
        info = counting_client.get(service["id"] + "/info.json").json()
        assert (info["width"], info["height"]) == (canvas["width"], canvas["height"])
        image = counting_client.get(painting["body"]["id"])
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(image.content)).size == (canvas["width"], canvas["height"])
        services.append(service["id"].split("/instances/")[1])
    sops = [part.split("/")[0] for part in services]
    assert [part.split("/")[-1] for part in services] == ["1", "2", "1"]  # both frames of the first, then the kept one
    assert [numbers[sop] for sop in sops] == [1, 1, 2]
    again = counting_client.get(url, headers={"If-None-Match": answer.headers["ETag"]})
    assert again.status_code == 304
    missing = counting_client.get(f"/iiif/studies/{study}/series/1.2.3.4/manifest.json")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
