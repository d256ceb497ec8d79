"""kill -9 at random moments, then rerun: nothing lost, nothing duplicated."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures.generate import Spec, write
from transcode.archive import FolderArchive
from transcode.archive.check import verify_archive

FILES = 24
SEEDS = [int(s) for s in os.environ.get("CRASH_SEEDS", "1,2,3,4").split(",")]


def _ingest(src: Path, archive: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "transcode.cli", "ingest", str(src), "--archive", str(archive), "--workers", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for n in range(FILES):
        write(Spec("CT", 512, 512, 2 if n % 3 else 1, 16, 12, seed=n), src / f"{n:02d}.dcm")
    return src


@pytest.mark.parametrize("seed", SEEDS)
def test_rerun_after_kill_completes_with_nothing_lost_or_duplicated(source: Path, tmp_path: Path, seed: int) -> None:
    archive = tmp_path / "archive"
    # Time a complete run once, so kills land anywhere inside one.
    started = time.monotonic()
    _ingest(source, tmp_path / "timing").wait()
    full = time.monotonic() - started
    rng = random.Random(seed)
    for _ in range(3):
        run = _ingest(source, archive)
        time.sleep(rng.uniform(0.05, full))
        if run.poll() is None:
            run.send_signal(signal.SIGKILL)
        run.wait()
    assert _ingest(source, archive).wait() == 0

    with FolderArchive(archive) as store:
        assert verify_archive(store) == []
        counts = store.index.counts()
        assert counts["instances"] == FILES and counts["conflicts"] == 0
        ledger = store.index.db.execute("SELECT outcome, COUNT(DISTINCT source_path) FROM ledger GROUP BY outcome")
        assert dict(ledger.fetchall()) == {"transcoded": FILES}
    # A run after completion does nothing.
    again = subprocess.run(
        [sys.executable, "-m", "transcode.cli", "ingest", str(source), "--archive", str(archive)],
        capture_output=True, text=True,
    )
    assert again.returncode == 0 and f"{FILES} already done" in again.stdout
