"""The built-in viewer in headless chromium over `transcode serve` on the
README's demo archive: the frames Cornerstone3D decoded in the browser (from
HTJ2K, by OpenJPH's WebAssembly) are the source pixels, in every loading
mode; the deep zoom fetches only the IIIF tiles in view; OHIF served from
the same origin needs no CORS preflight; with authentication on, the viewer
shows a sign-in form and, signed in with an API key, the same pixels. Skips
where node, chromium or the
harness's node_modules (`npm ci --prefix tests/browser`) are absent."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.pixels import pixel_array

from tests import browser_harness as harness
from transcode.security import KEYS_FILE
from transcode.security.keys import KeyFile

MODES = ["range", "stream", "whole"]
HTJ2K, JPEG_BASELINE = "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.50"
#: (modality, index in the series' stack, syntax sent): CT (two source
#: syntaxes), the deflated MR multi-frame, the tiled CR, a frame of the
#: colour US, and the US instance kept as is (lossy JPEG, sent as stored).
FRAMES = [("MR", 3, HTJ2K), ("CT", 0, HTJ2K), ("CT", 7, HTJ2K), ("CR", 0, HTJ2K), ("US", 1, HTJ2K),
          ("US", 4, JPEG_BASELINE)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if (why := harness.missing()) is not None:
        pytest.skip(why)
    folder = tmp_path_factory.mktemp("viewer")
    archive, sources = harness.demo_archive(folder)
    by_sop = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in sources}
    return {"folder": folder, "archive": archive, "sources": by_sop}


@pytest.fixture(scope="module")
def origin(demo: dict[str, Any]):  # -> Iterator[str]
    with harness.serving(demo["archive"]) as url:
        yield url


def series_by_modality(origin: str, credential: str | None = None) -> dict[str, tuple[str, str]]:
    found = {}
    for study in harness.qido(origin, "/studies", credential):
        study_uid = study["0020000D"]["Value"][0]
        for series in harness.qido(origin, f"/studies/{study_uid}/series", credential):
            found[series["00080060"]["Value"][0]] = (study_uid, series["0020000E"]["Value"][0])
    return found


def expected_sha256(source: Path, frame: int, summary: dict[str, Any]) -> str:
    """The browser's digest recomputed from pydicom's decode of the source:
    values as float64 after the rescale Cornerstone says it applied."""
    header = pydicom.dcmread(source, stop_before_pixels=True)
    if header.file_meta.TransferSyntaxUID.is_deflated:  # pydicom reads a deflated file's pixels only whole
        pixels = pydicom.dcmread(source).pixel_array
        pixels = pixels[frame - 1] if int(header.get("NumberOfFrames", 1) or 1) > 1 else pixels
    else:
        pixels = pixel_array(source, index=frame - 1)  # that frame only (a DBT object is 640 MB)
    assert pixels.shape[:2] == (summary["rows"], summary["columns"])
    values = pixels.astype(np.float64)
    if summary["scaled"]:
        values = values * summary["slope"] + summary["intercept"]
    return hashlib.sha256(values.astype("<f8").tobytes()).hexdigest()


def test_frames_decoded_in_the_browser_are_the_source_pixels(demo, origin, tmp_path) -> None:
    series = series_by_modality(origin)
    jobs = {"modes": MODES, "screenshot": True, "interact": {"study": series["CT"][0], "series": series["CT"][1]},
            "frames": [{"study": series[m][0], "series": series[m][1], "index": i} for m, i, _ in FRAMES]}
    result = harness.browse(origin, tmp_path, "check", jobs)
    assert set(result["frames"]) == set(MODES)
    for mode, summaries in result["frames"].items():
        assert len(summaries) == len(FRAMES)
        for (modality, _, syntax), summary in zip(FRAMES, summaries, strict=True):
            sop, frame = re.search(r"/instances/([\d.]+)/frames/(\d+)$", summary["imageId"]).groups()
            assert summary["transferSyntax"] == syntax, (mode, modality, summary)
            assert summary["samples"] == (3 if modality == "US" else 1)
            assert summary["sha256"] == expected_sha256(demo["sources"][sop], int(frame), summary), \
                (mode, modality, summary)
    # The mouse works the tools: the wheel scrolls the stack, a left drag changes the window.
    moved = result["interaction"]
    assert moved["before"]["index"] == 0 and moved["scrolled"]["index"] == 2, moved
    assert moved["dragged"]["index"] == 2 and moved["dragged"]["voi"] != moved["scrolled"]["voi"], moved
    screenshot = Path(result["screenshot"])
    assert screenshot.stat().st_size > 10_000  # a rendered page, not an empty one
    assert not [line for line in result["console"] if line.startswith("pageerror")]
    assert result["elsewhere"] == []  # everything from this server: no CDN


def test_with_authentication_the_viewer_signs_in_and_shows_the_source_pixels(demo, tmp_path) -> None:
    archive = tmp_path / "archive"
    shutil.copytree(demo["archive"], archive)
    (tmp_path / "auth.toml").write_text("")  # API keys only, from the archive's key file
    _, credential = KeyFile(archive / KEYS_FILE).create("viewer", ("read",))
    with harness.serving(archive, "--auth-config", str(tmp_path / "auth.toml")) as url:
        series = series_by_modality(url, credential)
        frames = [("CT", 7, HTJ2K), ("US", 1, HTJ2K), ("US", 4, JPEG_BASELINE)]
        jobs = {"modes": ["range", "whole"], "credential": credential, "signin": True,
                "frames": [{"study": series[m][0], "series": series[m][1], "index": i} for m, i, _ in frames]}
        result = harness.browse(url, tmp_path / "out", "check", jobs)
    signin = result["signin"]  # no credential: the form, not a broken page
    assert signin["shown"] and signin["cards"] == 0 and signin["error"] == ""
    assert signin["status"] == "sign in to see the studies"
    assert signin["refused"]["shown"] and "401" in signin["refused"]["error"]  # a wrong key: the form again
    for mode, summaries in result["frames"].items():  # signed in: every request carried the key
        for (modality, _, syntax), summary in zip(frames, summaries, strict=True):
            sop, frame = re.search(r"/instances/([\d.]+)/frames/(\d+)$", summary["imageId"]).groups()
            assert summary["transferSyntax"] == syntax, (mode, modality, summary)
            assert summary["sha256"] == expected_sha256(demo["sources"][sop], int(frame), summary), (mode, summary)
    assert not [line for line in result["console"] if line.startswith("pageerror")]


def _region(url: str, width: int, height: int) -> tuple[float, float, float, float]:
    region = url.split("/")[-4]
    if region == "full":
        return 0, 0, width, height
    x, y, w, h = map(float, region.split(","))
    return x, y, w, h


def _full_resolution(url: str, width: int, height: int) -> bool:
    """A IIIF tile URL asking its region at scale 1 (`…/x,y,w,h/w,[h]/…`)."""
    size = url.split("/")[-3].split(",")[0]
    return size.isdigit() and _region(url, width, height)[2] == int(size)


def test_deep_zoom_fetches_only_the_tiles_in_view(demo, origin, tmp_path) -> None:
    study, series = series_by_modality(origin)["CR"]
    instance = harness.qido(origin, f"/studies/{study}/series/{series}/instances")[0]
    sop = instance["00080018"]["Value"][0]
    base = f"{origin}/iiif/studies/{study}/series/{series}/instances/{sop}/frames/1"
    answered = harness.status(f"{base}/info.json")
    if answered == 404:
        pytest.skip("the IIIF Image API is not served here (GET …/info.json answers 404: branch `regions` "
                    "not merged)")
    assert answered == 200
    with urllib.request.urlopen(f"{base}/info.json", timeout=30) as response:
        info = json.load(response)
    width, height = info["width"], info["height"]
    tile_w, tile_h = info["tiles"][0]["width"], info["tiles"][0].get("height", info["tiles"][0]["width"])
    full_resolution_tiles = math.ceil(width / tile_w) * math.ceil(height / tile_h)
    assert full_resolution_tiles > 1, "the CR is not tiled"
    corner = {"x": 0, "y": 0, "w": width // 4, "h": height // 4}
    result = harness.browse(origin, tmp_path, "check",
                            {"modes": [], "frames": [], "zoom": {"study": study, "series": series, "sop": sop,
                                                                 "frame": 1, **corner}})
    zoom = result["zoom"]
    assert zoom["info"] == f"{base}/info.json"
    assert zoom["tiles"], "zooming in fetched no tile"
    visible = zoom["visible"]
    for url in zoom["tiles"]:
        assert url.startswith(f"{base}/") and url.endswith("/0/default.jpg"), url
        x, y, w, h = _region(url, width, height)
        overlaps = (x < visible["x"] + visible["w"] + 1 and visible["x"] - 1 < x + w
                    and y < visible["y"] + visible["h"] + 1 and visible["y"] - 1 < y + h)
        assert overlaps, (url, visible)
    assert visible["x"] + visible["w"] < width and visible["y"] + visible["h"] < height
    # The corner is shown at full resolution, from some of that level's tiles only.
    full = {url for url in zoom["tiles"] if _full_resolution(url, width, height)}
    assert 0 < len(full) < full_resolution_tiles, zoom["tiles"]
    assert zoom["panel"] >= len(zoom["tiles"])  # the viewer lists what it fetched


@pytest.mark.slow
def test_a_tomosynthesis_frame_in_the_browser(tmp_path) -> None:
    """The 69-frame 2457x1890 DBT object: a middle frame decoded in the
    browser, shown progressively first, equals the source frame."""
    if (why := harness.missing()) is not None:
        pytest.skip(why)
    archive, (source,) = harness.dbt_archive(tmp_path / "dbt")
    with harness.serving(archive) as url:
        (study,) = harness.qido(url, "/studies")
        study_uid = study["0020000D"]["Value"][0]
        (series,) = harness.qido(url, f"/studies/{study_uid}/series")
        series_uid = series["0020000E"]["Value"][0]
        first = harness.browse(url, tmp_path, "first-image", {"modes": ["range"], "study": study_uid,
                                                             "series": series_uid})["runs"][0]
        result = harness.browse(url, tmp_path, "check", {"modes": ["range"], "frames": [
            {"study": study_uid, "series": series_uid, "index": 34}]})
    assert (first["columns"], first["rows"]) < (1890, 2457) and first["bytes"] < 2 ** 17  # a low resolution first
    (summary,) = result["frames"]["range"]
    assert summary["imageId"].endswith("/frames/35")
    assert summary["sha256"] == expected_sha256(source, 35, summary)


def test_ohif_from_the_same_origin_makes_no_preflight(demo, tmp_path) -> None:
    if not (harness.OHIF_DIST / "index.html").is_file():
        pytest.skip(f"no OHIF build at {harness.OHIF_DIST} (.ci/run unpacks `npm pack @ohif/app@3.13.2` there)")
    with harness.serving(demo["archive"], "--viewer-dir", str(harness.OHIF_DIST)) as url:
        study, _ = series_by_modality(url)["US"]
        result = harness.browse(url, tmp_path, "check",
                                {"modes": [], "frames": [], "ohif": {"url": f"{url}/ohif/", "study": study}})
    requests = result["ohif"]["requests"]
    assert "Demo, Patient" in result["ohif"]["text"]  # the study list, from our QIDO-RS
    frames = [r for r in requests if "/frames/" in r["url"]]
    assert frames, "OHIF's viewer fetched no frame"
    assert all(r["url"].startswith(f"{url}/") for r in requests if r["url"].startswith(("http:", "https:")))
    assert not [r for r in requests if r["method"] == "OPTIONS"]
    assert not [line for line in result["console"] if line.startswith("ohif pageerror")]
    shown = result["ohif"]["frames"]
    assert shown, "OHIF shows no frame"
    for summary in shown:  # decoded by OHIF's Cornerstone3D: the source pixels
        sop, frame = re.search(r"/instances/([\d.]+)/frames/(\d+)$", summary["imageId"]).groups()
        assert summary["sha256"] == expected_sha256(demo["sources"][sop], int(frame), summary), summary
