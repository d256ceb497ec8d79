"""C-STORE throughput: `transcode listen` against Orthanc, in one run.

dcmtk's storescu sends the same 300 512x512 CT files with clinical headers
(`fixtures.generate.write_ct_series`) over 1 association, then over 4 at
once (75 files each), to each receiver started fresh on loopback:

- `transcode listen --workers 2` (every instance transcoded to HTJ2K,
  verified, answered once durable in the archive), and the same with
  `--ack spooled` (answered once durable in the spool, archived behind);
- Orthanc storing as received;
- Orthanc transcoding to J2K lossless on ingest ("IngestTranscoding"),
  which needs a JPEG 2000 codec (Orthanc's GDCM plugin): without it
  Orthanc stores as received, and the script says so (it checks the
  transfer syntax of what Orthanc stored) instead of reporting a ratio;

(Orthanc's other lossless ingest transcoding here, JPEG-LS through DCMTK,
is not compared: Orthanc 1.10 aborts on these signed 12-bit CT files, an
assertion in DCMTK's CharLS.)

TCP_NODELAY is on for everyone: the environment variable dcmtk reads
(storescu, and Orthanc's DICOM server, which is dcmtk's), Orthanc's
"TcpNoDelay", and `transcode listen` sets it on each connection. Also
timed, as a reference for where the time goes: `transcode ingest
--workers 2` of the same files from disk (no network, no per-instance
answer). Reported: files/s of each as the sender saw it (the last answer),
and until the receiver held every instance (`--ack spooled` archives after
it answers), and the ratios the issue targets (listen / Orthanc plain >=
1.0, listen / Orthanc J2K >= 6).

    python benchmarks/dimse_throughput.py [--files 300] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fixtures.generate import write_ct_series
from tests.peers import GDCM_PLUGIN, ORTHANC, free_port, orthanc

STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"


def send(port: int, aet: str, groups: list[list[Path]]) -> float:
    """Seconds for storescu to send every group, one association per group at once."""
    began = time.perf_counter()
    senders = [subprocess.Popen([STORESCU, "-aec", aet, "127.0.0.1", str(port), *map(str, group)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for group in groups]
    failures = [process.communicate(timeout=900)[1] for process in senders]
    seconds = time.perf_counter() - began
    bad = [err for process, err in zip(senders, failures, strict=True) if process.returncode or "Failed" in err]
    if bad:
        raise RuntimeError(f"storescu failed: {bad[0][-500:]}")
    return seconds


@contextmanager
def listen(folder: Path, ack: str) -> Iterator[tuple[int, str, Callable[[], int]]]:
    port, archive = free_port(), folder / "archive"
    with open(folder / "listen.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "transcode.cli", "listen", "--archive", str(archive),
                                    "--port", str(port), "--workers", "2", "--ack", ack], cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([ECHOSCU, "-aec", "TRANSCODE", "127.0.0.1", str(port)], capture_output=True,
                             check=False).returncode:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((folder / "listen.log").read_text())
            time.sleep(0.2)

        def count() -> int:
            db = sqlite3.connect(f"file:{archive / 'index.sqlite'}?mode=ro", uri=True)
            try:
                return db.execute("SELECT count(*) FROM instances").fetchone()[0]
            finally:
                db.close()

        yield port, "TRANSCODE", count
    finally:
        process.terminate()
        process.wait(timeout=120)


@contextmanager
def orthanc_peer(folder: Path, syntax: str | None) -> Iterator[tuple[int, str, Callable[[], int]]]:
    """Orthanc, transcoding to `syntax` on ingest (None: storing as received)."""
    config: dict[str, object] = {"TcpNoDelay": True, "ConcurrentJobs": 2}
    if syntax:
        config["IngestTranscoding"] = syntax
        if GDCM_PLUGIN.exists():
            config["Plugins"] = [str(GDCM_PLUGIN)]
    with orthanc(folder, config=config) as peer:
        def count() -> int:
            stored = peer.get("/instances")
            if stored:  # what Orthanc stored: the syntax asked for, or the one received
                with urllib.request.urlopen(f"{peer.url}/instances/{stored[0]}/metadata/TransferSyntax") as answer:
                    syntaxes.add(answer.read().decode())
            return len(stored)

        syntaxes: set[str] = set()
        yield peer.dicom_port, peer.aet, count
        STORED_AS[str(folder.name)] = syntaxes


#: Transfer syntax Orthanc stored, per run folder.
STORED_AS: dict[str, set[str]] = {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if ORTHANC is None or not Path(STORESCU).exists():
        print("needs Orthanc and dcmtk (Debian packages orthanc, dcmtk)", file=sys.stderr)
        return 2
    os.environ["TCP_NODELAY"] = "1"  # dcmtk's switch, for storescu and Orthanc's DICOM server
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="dimse-bench-") as tmp:
        root = Path(tmp)
        files = write_ct_series(root / "ct", args.files)
        shards = [files[n::4] for n in range(4)]
        receivers = {"listen": lambda f: listen(f, "archived"), "listen_spooled": lambda f: listen(f, "spooled"),
                     "orthanc": lambda f: orthanc_peer(f, None),
                     "orthanc_j2k": lambda f: orthanc_peer(f, J2K_LOSSLESS)}
        for associations, groups in [(1, [files]), (4, shards)]:
            for name, start in receivers.items():
                folder = root / f"{name}-{associations}"
                folder.mkdir()
                with start(folder) as (port, aet, count):
                    began = time.perf_counter()
                    seconds = send(port, aet, groups)
                    deadline = time.monotonic() + 600
                    while (stored := count()) < len(files) and time.monotonic() < deadline:
                        time.sleep(0.05)
                    held = time.perf_counter() - began
                if stored != len(files):
                    raise RuntimeError(f"{name} holds {stored} of {len(files)} instances")
                results[f"{name}_{associations}"] = len(files) / seconds
                results[f"{name}_{associations}_held"] = len(files) / held
                stored_as = ", ".join(sorted(STORED_AS.get(folder.name, ())))
                print(f"{name:14} {associations} association(s): {len(files) / seconds:7.1f} files/s answered, "
                      f"{len(files) / held:7.1f} files/s held{f'  (stored as {stored_as})' if stored_as else ''}",
                      flush=True)
                shutil.rmtree(folder, ignore_errors=True)
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "transcode.cli", "ingest", str(root / "ct"), "--archive",
                        str(root / "ingest"), "--workers", "2"], cwd=ROOT, check=True, capture_output=True)
        results["ingest_files"] = len(files) / (time.perf_counter() - began)
        print(f"{'ingest':12} from disk:          {results['ingest_files']:7.1f} files/s", flush=True)
    j2k = all(STORED_AS.get(f"orthanc_j2k-{n}") == {J2K_LOSSLESS} for n in (1, 4))
    for n in (1, 4):
        for ours in ("listen", "listen_spooled"):
            for peer in ("orthanc", "orthanc_j2k"):
                results[f"{ours}_vs_{peer}_{n}"] = results[f"{ours}_{n}"] / results[f"{peer}_{n}"]
            j2k_ratio = (f"{results[f'{ours}_vs_orthanc_j2k_{n}']:.2f}x (target >= 6)" if j2k else
                         "not measured: Orthanc stored as received (no JPEG 2000 codec: its GDCM plugin is absent)")
            print(f"{n} association(s), answered: {ours} / Orthanc plain {results[f'{ours}_vs_orthanc_{n}']:.2f}x "
                  f"(target >= 1.0); {ours} / Orthanc J2K {j2k_ratio}; "
                  f"held, {ours} / ingest from disk {results[f'{ours}_{n}_held'] / results['ingest_files']:.2f}x")
    results["orthanc_j2k_transcoded"] = j2k
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dimse_throughput.json").write_text(json.dumps({"files": args.files, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
