"""The built-in viewer in a real browser: Debian's `chromium` driven by
puppeteer-core (tests/browser/, `npm ci --prefix tests/browser`, done by
`.ci/run`) against `transcode serve` on loopback, as a user runs it.
Used by tests/test_viewer_browser.py and benchmarks/viewer_first_image.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fixtures.generate import demo_study, write_dbt
from transcode.bench.server import free_port
from transcode.cli import EXIT_KEPT, EXIT_OK, main

HARNESS = Path(__file__).resolve().parent / "browser"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
#: Where `.ci/run` unpacks OHIF's prebuilt app (`npm pack @ohif/app`), if it did.
OHIF_DIST = Path(os.environ.get("TRANSCODE_OHIF_DIST", HARNESS / "ohif" / "package" / "dist"))


def missing() -> str | None:
    """Why the browser cannot run here (a sentence), or None."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not CHROMIUM.is_file():
        return f"no chromium at {CHROMIUM} (Debian package chromium)"
    if not (HARNESS / "node_modules" / "puppeteer-core").is_dir():
        return "the browser harness is not installed: npm ci --prefix tests/browser"
    return None


def demo_archive(folder: Path) -> tuple[Path, list[Path]]:
    """The README's demo study generated under `folder` and ingested:
    (archive, source files)."""
    return _ingested(folder, demo_study(folder / "source"))


def dbt_archive(folder: Path, frames: int = 69) -> tuple[Path, list[Path]]:
    """A generated tomosynthesis object (`frames` x 2457 x 1890) under
    `folder`, ingested: (archive, [its source file])."""
    (folder / "source").mkdir(parents=True)
    return _ingested(folder, [write_dbt(folder / "source" / "dbt.dcm", frames=frames)])


def _ingested(folder: Path, sources: list[Path]) -> tuple[Path, list[Path]]:
    archive = folder / "archive"
    assert main(["ingest", str(folder / "source"), "--archive", str(archive)]) in (EXIT_OK, EXIT_KEPT)
    return archive, sources


@contextmanager
def serving(archive: Path, *options: str) -> Iterator[str]:
    """`transcode serve` on `archive` on a free loopback port, as the README
    runs it; yields its origin once it answers, stops it afterwards."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "transcode.cli", "serve", "--archive", str(archive),
                             "--port", str(port), "--log-level", "warning", *options],
                            stdout=subprocess.PIPE, text=True)
    origin = f"http://127.0.0.1:{port}"
    try:
        printed = [proc.stdout.readline() for _ in range(2 + ("--viewer-dir" in options))]
        assert f"Viewer: open {origin}/ in a browser\n" in printed, printed
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{origin}/dicomweb/studies", timeout=5):
                    break
            except urllib.error.HTTPError:  # answering (401 with authentication on)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "transcode serve did not start"
                time.sleep(0.1)
        yield origin
    finally:
        proc.terminate()
        proc.wait(10)


def status(url: str) -> int:
    """The HTTP status of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def qido(origin: str, path: str, credential: str | None = None) -> list[dict[str, Any]]:
    headers = {"Accept": "application/dicom+json"} | ({"Authorization": f"Bearer {credential}"} if credential else {})
    request = urllib.request.Request(f"{origin}/dicomweb{path}", headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def browse(origin: str, out: Path, command: str, jobs: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    """Run tests/browser/viewer.mjs `command` (see there) and return its JSON."""
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["node", str(HARNESS / "viewer.mjs"), origin, str(out), command, json.dumps(jobs)],
                          check=False, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "CHROMIUM": str(CHROMIUM)})
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
