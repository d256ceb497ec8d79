"""Ingest into an S3 archive (a local SeaweedFS started here, SQLite
catalog) against ingest into a folder archive, on the same files, alternated
in one run (issue 15: S3 + PostgreSQL at least 0.8x folder + SQLite; the
PostgreSQL catalog is measured elsewhere).

The files: a CT series of `--ct-files` single-frame 512x512 16-bit
instances (`fixtures.generate.write_ct_series`). Each round runs
`transcode ingest --workers 2 --threads 1` into a fresh folder archive and
into a fresh `s3://BUCKET/PREFIX` with a fresh catalog, in alternating
order. Figures per runner: wall seconds of the command, the run's seconds
(from its report) and steady seconds per file (from the ledger); ratios
are throughput, S3 over folder, from the medians over the rounds.

    python benchmarks/s3_ingest.py [--ct-files 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures.generate import write_ct_series
from tests.seaweed import running
from transcode.bench.measure import machine, save, timed_ingest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct-files", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    kinds = ("wall", "run", "steady")
    figures: dict[str, dict[str, list[float]]] = {name: {k: [] for k in kinds} for name in ("folder", "s3")}
    with tempfile.TemporaryDirectory() as tmp, running(Path(tmp)) as server:
        os.environ.update(server.env())  # for the ingest commands
        src = Path(tmp, "src")
        write_ct_series(src, args.ct_files)
        for round_ in range(args.rounds):
            for name in ("folder", "s3") if round_ % 2 == 0 else ("s3", "folder"):
                where = Path(tmp, f"{name}-{round_}")
                archive = (["--archive", str(where)] if name == "folder" else
                           ["--archive", f"s3://{server.bucket}/{uuid.uuid4().hex[:8]}", "--catalog", str(where)])
                options = [str(src), *archive, "--workers", "2"]
                for kind, value in zip(kinds, timed_ingest(options, where, args.ct_files), strict=True):
                    figures[name][kind].append(value)
    median = {name: {kind: statistics.median(values) for kind, values in runs.items()}
              for name, runs in figures.items()}
    rows = [f"{args.ct_files} CT 512x512 files, 2 workers x 1 thread, median of {args.rounds} alternated rounds",
            "", "| archive | wall s | run s | steady ms/file | files/s (steady) |", "|---|---|---|---|---|"]
    for name, m in median.items():
        rows.append(f"| {name} | {m['wall']:.2f} | {m['run']:.2f} | {m['steady'] * 1000:.1f} | {1 / m['steady']:.1f} |")
    ratios = {kind: median["folder"][kind] / median["s3"][kind] for kind in kinds}
    rows += ["", (f"S3 / folder throughput: {ratios['wall']:.2f}x wall, {ratios['run']:.2f}x run, "
                  f"{ratios['steady']:.2f}x steady")]
    save(args.out, "s3_ingest", {"files": args.ct_files, "rounds": figures, "median": median, "ratios": ratios,
                                 "machine": machine()}, "\n".join(rows))


if __name__ == "__main__":
    main()
