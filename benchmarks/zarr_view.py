"""The zarr view at reduced resolution: bytes read and time for a CT series.

A generated 300-slice CT series (512x512, 12 bits in 16, clinical header) is
ingested, then read whole through `transcode.zarr.open_series` with
zarr-python at dataset "2" (1/4 of the side, 1/16 of the pixels) and at
dataset "0" (full resolution), alternately, in one run. Reported: object
bytes read over the stored objects' bytes (issue 13's target: at most 10%
at 1/4), over the frames' codestream bytes, and seconds per read of the
series (best of the repeats; the machine may be shared).

    python benchmarks/zarr_view.py [--slices 300] [--repeats 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zarr
from pydicom import dcmread

from fixtures.generate import write_ct_series
from transcode import zarr as view
from transcode.archive import FolderArchive
from transcode.bench.counting import CountingArchive
from transcode.bench.measure import machine, save
from transcode.pipeline import ingest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="ingest processes")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = write_ct_series(root / "src", args.slices)
        with FolderArchive(root / "archive", exclusive=True) as archive:
            ingest([root / "src"], archive, workers=args.workers)
        header = dcmread(paths[0], stop_before_pixels=True)
        objects = sum(p.stat().st_size for p in (root / "archive").rglob("*.dcm"))
        results = {"machine": machine(), "slices": args.slices, "stored_bytes": objects, "datasets": {}}
        with CountingArchive(root / "archive", read_only=True) as archive:
            store = view.open_series(archive, header.StudyInstanceUID, header.SeriesInstanceUID)
            codestreams = sum(length for sl in store.volume.slices for _, length in
                              store.catalog.instance(sl.study, sl.series, sl.sop).spans)
            results["codestream_bytes"] = codestreams
            image = zarr.open_group(store, mode="r")
            times: dict[str, list[float]] = {"2": [], "0": []}
            for _ in range(args.repeats):
                for key, seconds in times.items():
                    before, began = archive.read_bytes, time.perf_counter()
                    shape = image[key][:].shape
                    seconds.append(time.perf_counter() - began)
                    results["datasets"][key] = {"shape": shape, "read_bytes": archive.read_bytes - before}
        for key, seconds in times.items():
            entry = results["datasets"][key]
            entry.update(seconds=min(seconds), of_stored=entry["read_bytes"] / objects,
                         of_codestreams=entry["read_bytes"] / codestreams)
    save(args.out, "zarr_view", results, table(results))
    return 0


def table(results: dict) -> str:
    rows = ["| dataset | shape | bytes read | of stored objects | of codestreams | seconds |", "|---|---|---|---|---|---|"]
    for key, e in results["datasets"].items():
        rows.append(f"| {key} | {'x'.join(map(str, e['shape']))} | {e['read_bytes']:,} | {e['of_stored']:.1%} | "
                    f"{e['of_codestreams']:.1%} | {e['seconds']:.2f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
