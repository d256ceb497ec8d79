"""C-GET retrieval from Orthanc, with and without TCP_NODELAY on our side.

Uploads a CT series (`fixtures.generate.write_ct_series`, 512x512, clinical
headers) to an Orthanc started on loopback (tests/peers.py), then retrieves
the study with `transcode migrate`'s C-GET (`Migration._get_series`: received and
spooled, fsynced, not ingested) alternately with our socket's Nagle algorithm
off (what migrate does) and on, `--repeats` times each; prints files/s per
run and the ratio of medians. Orthanc's own side is as configured (Debian
defaults).

    python benchmarks/migrate_retrieve.py [--files 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fixtures.generate import write_ct_series  # noqa: E402
from tests.peers import free_port, orthanc  # noqa: E402
from transcode.dimse import migrate  # noqa: E402
from transcode.dimse.migrate import Migration  # noqa: E402
from transcode.dimse.scu import RemoteAE  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        files = write_ct_series(work / "ct", args.files)
        import pydicom

        study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        with orthanc(work / "orthanc", modalities={"t": ["TRANSCODE", "127.0.0.1", free_port()]}) as peer:
            for path in files:
                peer.post("/instances", path.read_bytes())
            migration = Migration(work / "archive", RemoteAE(peer.aet, "127.0.0.1", peer.dicom_port), None)  # type: ignore[arg-type]
            listed = migration.instances(study)
            rates: dict[str, list[float]] = {"nodelay": [], "nagle": []}
            with_nodelay = migrate.no_delay
            for _ in range(args.repeats):
                for case, runs in rates.items():
                    migrate.no_delay = with_nodelay if case == "nodelay" else (lambda assoc: None)
                    folder = work / "spool"
                    folder.mkdir()
                    started = time.perf_counter()
                    sub = migration._get_series(study, listed, folder)
                    seconds = time.perf_counter() - started
                    assert sub.completed == args.files and len(list(folder.iterdir())) == args.files, sub
                    runs.append(args.files / seconds)
                    print(f"{case:>8}: {args.files / seconds:7.1f} files/s", flush=True)
                    shutil.rmtree(folder)
            migrate.no_delay = with_nodelay
    medians = {case: statistics.median(values) for case, values in rates.items()}
    print(f"median files/s: TCP_NODELAY {medians['nodelay']:.1f}, Nagle on {medians['nagle']:.1f}, "
          f"ratio {medians['nodelay'] / medians['nagle']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
