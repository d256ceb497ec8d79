"""Ingest on a Dask `LocalCluster` against the local process pool, on the
same files, alternated in one run (issue 15: Dask `local:2` >= 0.9x the pool).

The files: a CT series of `--ct-files` single-frame 512x512 16-bit
instances (`fixtures.generate.write_ct_series`). Each round runs
`transcode ingest --workers 2 --threads 1` and `transcode ingest --dask
local:2 --threads 1`, each into a fresh archive, in alternating order.
Three figures per run: wall seconds of the whole command (interpreter,
pool or cluster start and stop included); run seconds, the ingest run
alone as its report gives them (without starting and stopping the Dask
cluster, which `--dask local:N` does before and after the run; with
starting the local pool's processes, which the run does); and steady
seconds per file from the ledger (first to last commit: throughput once
the workers run). Ratios are throughput, Dask over pool, from the medians
over the rounds.

    python benchmarks/dask_ingest.py [--ct-files 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures.generate import write_ct_series
from transcode.bench.measure import machine, save, timed_ingest

RUNNERS = {"pool": ["--workers", "2"], "dask": ["--dask", "local:2"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct-files", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    figures: dict[str, dict[str, list[float]]] = {name: {"wall": [], "run": [], "steady": []} for name in RUNNERS}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "src")
        write_ct_series(src, args.ct_files)
        for round_ in range(args.rounds):
            order = list(RUNNERS) if round_ % 2 == 0 else list(reversed(RUNNERS))
            for name in order:
                archive = Path(tmp, f"{name}-{round_}")
                wall, seconds, steady = timed_ingest([str(src), "--archive", str(archive), *RUNNERS[name]], archive,
                                                     args.ct_files)
                figures[name]["wall"].append(wall)
                figures[name]["run"].append(seconds)
                figures[name]["steady"].append(steady)
    median = {name: {kind: statistics.median(values) for kind, values in runs.items()}
              for name, runs in figures.items()}
    rows = [f"{args.ct_files} CT 512x512 files, 2 workers x 1 thread, median of {args.rounds} alternated rounds",
            "", "| runner | wall s | run s | files/s (wall) | files/s (run) | steady ms/file | files/s (steady) |",
            "|---|---|---|---|---|---|---|"]
    for name, m in median.items():
        rows.append(f"| {name} | {m['wall']:.2f} | {m['run']:.2f} | {args.ct_files / m['wall']:.1f} | "
                    f"{args.ct_files / m['run']:.1f} | {m['steady'] * 1000:.1f} | {1 / m['steady']:.1f} |")
    ratios = {kind: median["pool"][kind] / median["dask"][kind] for kind in ("wall", "run", "steady")}
    rows += ["", (f"Dask local:2 throughput / pool: {ratios['wall']:.2f}x wall, {ratios['run']:.2f}x run (without "
                  f"the cluster's start and stop), {ratios['steady']:.2f}x steady (target >= 0.9x)")]
    results = {"files": args.ct_files, "rounds": figures, "median": median, "ratios": ratios, "machine": machine()}
    save(args.out, "dask_ingest", results, "\n".join(rows))


if __name__ == "__main__":
    main()
