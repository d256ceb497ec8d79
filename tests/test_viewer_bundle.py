"""The built viewer shipped in the package: that it matches its sources in
viewer/, and how the server serves it (and a prebuilt OHIF) beside DICOMweb."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from transcode.archive import FolderArchive
from transcode.cli import EXIT_USAGE, main
from transcode.server import create_app
from transcode.server.app import PREFLIGHT_MAX_AGE
from transcode.server.viewer import DIST

SOURCES = Path(__file__).resolve().parents[1] / "viewer"


def sources_digest() -> str:
    """viewer/build.mjs's digest of its inputs, recomputed here."""
    files = sorted(p for p in (SOURCES / "src").rglob("*") if p.is_file())
    files += [SOURCES / name for name in ("build.mjs", "package.json", "package-lock.json")]
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(SOURCES).as_posix()}\0".encode())
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def test_the_bundle_was_built_from_the_committed_sources() -> None:
    if not SOURCES.is_dir():
        pytest.skip("no viewer sources beside this installation")
    assert (DIST / "SOURCES.sha256").read_text().strip() == sources_digest(), \
        "viewer/ changed since the bundle was built: cd viewer && npm ci && npm run build"


def test_rebuilding_gives_the_committed_bundle(tmp_path: Path) -> None:
    if shutil.which("node") is None or not (SOURCES / "node_modules" / "esbuild").is_dir():
        pytest.skip("node or the viewer's node_modules are absent (cd viewer && npm ci)")
    subprocess.run(["node", str(SOURCES / "build.mjs"), str(tmp_path)], check=True, capture_output=True, timeout=300)
    built = sorted(p.name for p in tmp_path.iterdir())
    assert built == sorted(p.name for p in DIST.iterdir())
    for name in built:
        assert (tmp_path / name).read_bytes() == (DIST / name).read_bytes(), name


@pytest.fixture
def client(tmp_path: Path):  # -> Iterator[TestClient]
    ohif = tmp_path / "ohif"
    ohif.mkdir()
    (ohif / "index.html").write_text('<script>window.PUBLIC_URL="/"</script><link href="/app.css">'
                                     '<script src="/app-config.js"></script><script src="/app.bundle.1.js"></script>'
                                     '<a href="//elsewhere.example/">x</a>')
    (ohif / "app.bundle.1.js").write_text('(() => { __webpack_require__.p = "/"; })();')
    (ohif / "app.css").write_text("body{}")
    with FolderArchive(tmp_path / "archive") as archive:
        yield TestClient(create_app(archive, cors_origins=["http://localhost:3000"], viewer_dir=ohif))


def test_the_viewer_is_served_at_the_root(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="viewer/viewer.js"' in page.text
    for name in ("viewer.js", "decodeImageFrameWorker.js", "openjphjs.wasm", "viewer.css"):
        asset = client.get(f"/viewer/{name}")
        assert asset.status_code == 200 and asset.content == (DIST / name).read_bytes()
        assert asset.headers["cache-control"] == "no-cache" and asset.headers["etag"]
    assert client.get("/viewer/openjphjs.wasm").headers["content-type"] == "application/wasm"
    assert client.get("/viewer/viewer.js").headers["content-encoding"] == "gzip"
    assert "content-encoding" not in client.get("/viewer/viewer.js", headers={"Accept-Encoding": "identity"}).headers
    assert client.get("/viewer/nothing.js").status_code == 404


def test_ohif_is_served_from_the_same_origin(client: TestClient) -> None:
    config = client.get("/ohif/app-config.js")
    assert config.status_code == 200 and config.headers["content-type"].startswith("text/javascript")
    assert '"wadoRoot": "http://testserver/dicomweb"' in config.text
    assert '"routerBasename": "/ohif/"' in config.text
    for route in ("/ohif/", "/ohif/viewer", "/ohif/viewer/1.2.3"):  # the app's own routes: its page
        page = client.get(route)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.text == ('<script>window.PUBLIC_URL="/ohif/"</script><link href="/ohif/app.css">'
                             '<script src="/ohif/app-config.js"></script><script src="/ohif/app.bundle.1.js">'
                             '</script><a href="//elsewhere.example/">x</a>')
    assert client.get("/ohif/app.bundle.1.js").text == '(() => { __webpack_require__.p = "/ohif/"; })();'
    assert client.get("/ohif/app.css").text == "body{}"


def test_a_static_viewer_with_nothing_to_move_gets_its_page_for_any_route(tmp_path: Path) -> None:
    """A viewer whose page names no root-relative URL (nothing to move under
    `/ohif/`) answered 500 for each of its own routes and for paths that
    leave the folder: the page was only built where something moved."""
    viewer = tmp_path / "viewer"
    viewer.mkdir()
    (viewer / "index.html").write_text('<script src="app.js"></script>')
    (tmp_path / "secret.txt").write_text("not to be served")
    with FolderArchive(tmp_path / "archive") as archive:
        client = TestClient(create_app(archive, viewer_dir=viewer))
        for route in ("/ohif/", "/ohif/viewer/1.2.3", "/ohif/..%2fsecret.txt", "/ohif/%2e%2e/secret.txt",
                      "/ohif/....//secret.txt"):
            page = client.get(route)
            assert (page.status_code, page.text) == (200, '<script src="app.js"></script>'), route


def test_cross_origin_preflights_are_cached(client: TestClient) -> None:
    answer = client.options("/dicomweb/studies", headers={"Origin": "http://localhost:3000",
                                                          "Access-Control-Request-Method": "GET",
                                                          "Access-Control-Request-Headers": "accept"})
    assert answer.status_code == 200
    assert answer.headers["access-control-max-age"] == str(PREFLIGHT_MAX_AGE)


def test_serve_refuses_a_viewer_dir_without_a_page(tmp_path: Path) -> None:
    assert main(["serve", "--archive", str(tmp_path / "archive"), "--viewer-dir", str(tmp_path)]) == EXIT_USAGE
