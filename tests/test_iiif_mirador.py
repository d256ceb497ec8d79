"""Mirador, as a site embeds it (its prebuilt bundle on another origin),
opens a series' IIIF manifest from `transcode serve` and shows its frames
through the IIIF image services, then zooms in and fetches full-resolution
tiles of what is in view only: the deep-zoom viewer the README names, in
Debian's chromium. Mirador's bundle is unpacked by `.ci/run` (`npm pack
mirador@4.0.0`, Apache-2.0) into tests/browser/mirador/, which git ignores;
the test skips without it or without the browser harness."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import browser_harness as harness
from transcode.bench.server import free_port

MIRADOR = Path(os.environ.get("TRANSCODE_MIRADOR_DIST", harness.HARNESS / "mirador" / "package" / "dist"))
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Mirador</title></head>
<body><div id="viewer" style="position:absolute;inset:0"></div>
<script src="mirador.min.js"></script>
<script>Mirador.viewer({id: "viewer", windows: [{manifestId: %s}]});</script>
</body></html>
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if (why := harness.missing()) is not None:
        pytest.skip(why)
    if not (MIRADOR / "mirador.min.js").is_file():
        pytest.skip(f"Mirador's bundle is not at {MIRADOR}: .ci/run unpacks it (npm pack mirador@4.0.0)")
    archive, _ = harness.demo_archive(tmp_path_factory.mktemp("mirador"))
    return archive


@functools.cache
def _quiet_handler(folder: str) -> type[http.server.SimpleHTTPRequestHandler]:
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=folder, **kwargs)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def _site(folder: Path, port: int) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _quiet_handler(str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()


def test_mirador_opens_a_series_manifest_and_tiles_it(demo: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(MIRADOR / "mirador.min.js", site)
    site_port = free_port()
    site_origin = f"http://127.0.0.1:{site_port}"
    with harness.serving(demo, "--cors-origin", site_origin) as origin:
        (study,) = [s for s in harness.qido(origin, "/studies")]
        study_uid = study["0020000D"]["Value"][0]
        series = {s["00080060"]["Value"][0]: s["0020000E"]["Value"][0]
                  for s in harness.qido(origin, f"/studies/{study_uid}/series")}
        manifest = f"{origin}/iiif/studies/{study_uid}/series/{series['CR']}/manifest.json"
        with urllib.request.urlopen(manifest, timeout=30) as answer:
            label = json.load(answer)["label"]["none"][0]
        (site / "index.html").write_text(PAGE % json.dumps(manifest))
        for page in _site(site, site_port):
            done = subprocess.run(["node", str(harness.HARNESS / "mirador.mjs"), f"{page}/index.html",
                                   str(tmp_path)], check=False, capture_output=True, text=True, timeout=180,
                                  env={**os.environ, "CHROMIUM": str(harness.CHROMIUM)})
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    ours = [r for r in result["requests"] if r["url"].startswith(origin)]
    assert {r["status"] for r in ours} == {200}, ours
    assert any(r["url"] == manifest for r in ours)
    base = f"{origin}/iiif/studies/{study_uid}/series/{series['CR']}/instances/"
    infos = [r["url"] for r in ours if r["url"].endswith("/info.json")]
    assert infos and all(url.startswith(base) for url in infos)
    tiles = [r["url"] for r in ours if re.search(r"/[^/]+/[^/]+/0/default\.jpg$", r["url"])]
    assert tiles and all(url.startswith(base) for url in tiles), ours
    assert not [line for line in result["console"] if line.startswith("pageerror")], result["console"]
    assert Path(result["screenshot"]).stat().st_size > 10_000
    assert label in result["text"]  # the window is titled with the series
    # Then zoomed in over the upper left of the CR (2048 x 2500, 1024-pixel tiles: 2 x 3), about
    # threefold (mirador.mjs): Mirador fetches full-resolution tiles of what is in view, and none of
    # the bottom row (y 2048 to 2500), which stays out of view.
    zoomed = [r for r in result["zoomed"] if r["url"].startswith(base)]
    assert zoomed and {r["status"] for r in zoomed} == {200}, result["zoomed"]
    full = {region for r in zoomed if (region := _full_resolution_tile(r["url"])) is not None}
    assert full and all(y < 2048 for x, y, w, h in full), full


def _full_resolution_tile(url: str) -> tuple[int, int, int, int] | None:
    """The region (x, y, w, h) of a IIIF image request for a tile at full
    resolution (as many pixels wide as its region); None for any other request."""
    found = re.search(r"/(\d+),(\d+),(\d+),(\d+)/(\d+),\d*/0/default\.jpg$", url)
    if found is None or found[3] != found[5]:
        return None
    return int(found[1]), int(found[2]), int(found[3]), int(found[4])
