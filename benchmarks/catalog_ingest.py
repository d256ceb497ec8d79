"""Ingest into folder + SQLite, S3 + SQLite and S3 + PostgreSQL, alternated
in one run (issue 15's target: S3 + PostgreSQL at least 0.8x the files/s of
folder + SQLite).

The same CT series (single-frame 512x512 12-bit instances, generated) is
ingested by `transcode ingest` into a fresh archive of each kind in turn,
for several rounds (folder, S3+SQLite, S3+PG, then the next round), so the
three see the same machine. S3 is a local SeaweedFS, PostgreSQL a local
server with its default durability (fsync on); both started here.
Reported: wall seconds per run (median of the rounds), files/s, and each
kind's ratio to folder + SQLite.

    python benchmarks/catalog_ingest.py [--files 100] [--rounds 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import postgres, seaweed
from transcode.bench.measure import machine, save
from transcode.bench.server import ct_sources

KINDS = ("folder+sqlite", "s3+sqlite", "s3+postgresql")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory() as tmp, seaweed.running(Path(tmp)) as s3, \
            postgres.running(durable=True) as pg:
        root = Path(tmp)
        env = {**os.environ, **s3.env()}
        ct_sources(root / "src", args.files)
        for round_ in range(args.rounds):
            for kind in KINDS:
                where = root / f"{kind}-{round_}"
                url = f"s3://{s3.bucket}/{kind}-{round_}"
                archive = {"folder+sqlite": ["--archive", str(where)],
                           "s3+sqlite": ["--archive", url, "--catalog", str(where)],
                           "s3+postgresql": ["--archive", url, "--catalog", pg.create_database(),
                                             "--work-dir", str(where)]}[kind]
                began = time.perf_counter()
                subprocess.run([sys.executable, "-m", "transcode.cli", "ingest", str(root / "src"), *archive,
                                "--workers", str(args.workers)], env=env, check=True, stdout=subprocess.DEVNULL)
                seconds[kind].append(time.perf_counter() - began)
    base = statistics.median(seconds["folder+sqlite"])
    results: dict[str, object] = {"machine": machine(), "files": args.files, "rounds": args.rounds,
                                  "workers": args.workers}
    table = ["| archive + catalog | median s | files/s | vs folder + SQLite |", "|---|---|---|---|"]
    for kind, runs in seconds.items():
        median = statistics.median(runs)
        results[kind] = {"seconds": runs, "median_s": median, "files_per_s": args.files / median,
                         "ratio": base / median}
        table.append(f"| {kind} | {median:.2f} | {args.files / median:.1f} | {base / median:.2f}x |")
    save(args.out, "catalog_ingest", results, "\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
