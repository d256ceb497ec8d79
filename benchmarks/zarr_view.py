"""The zarr view at reduced resolution: bytes read and time for a CT series.

A generated 300-slice CT series (512x512, 12 bits in 16, clinical header) is
ingested, then read whole through `transcode.zarr.open_series` with
zarr-python at dataset "2" (1/4 of the side, 1/16 of the pixels) and at
dataset "0" (full resolution), alternately, in one run. Reported: object
bytes read over the stored objects' bytes (issue 13's target: at most 10%
at 1/4), over the frames' codestream bytes, and seconds per read of the
series (best of the repeats; the machine may be shared).

Tiled case: a generated tomosynthesis-sized object (`--dbt-frames` frames of
2457x1890, 10 bits in 16) ingested with the default settings (1024-pixel
tiles: 3 x 2 per frame) is opened with `open_instance`; one tile chunk of
frame 1 (the top-left tile) and the whole frame are read at dataset "0" and
at dataset "2", alternately. Reported: bytes read for the tile chunk over
those for the frame at the same dataset, and seconds (best of the repeats).

    python benchmarks/zarr_view.py [--slices 300] [--dbt-frames 3] [--repeats 3] [--workers 2]
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

from fixtures.generate import write_ct_series, write_dbt
from transcode import zarr as view
from transcode.archive import FolderArchive
from transcode.bench.counting import CountingArchive
from transcode.bench.measure import machine, save
from transcode.pipeline import ingest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--dbt-frames", type=int, default=3)
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
        results["tiled"] = tiled(root, args)
    save(args.out, "zarr_view", results, table(results) + "\n\n" + tiled_table(results["tiled"]))
    return 0


def tiled(root: Path, args: argparse.Namespace) -> dict:
    """Bytes and seconds for one tile chunk against the whole frame, at datasets 0 and 2."""
    (root / "dbt").mkdir()
    source = write_dbt(root / "dbt" / "dbt.dcm", frames=args.dbt_frames)
    with FolderArchive(root / "dbt-archive", exclusive=True) as archive:
        ingest([source], archive, workers=1)
    header = dcmread(source, stop_before_pixels=True)
    out: dict = {"frames": args.dbt_frames, "datasets": {}}
    with CountingArchive(root / "dbt-archive", read_only=True) as archive:
        store = view.open_instance(archive, header.StudyInstanceUID, header.SeriesInstanceUID, header.SOPInstanceUID)
        image = zarr.open_group(store, mode="r")
        for key in ("0", "2"):
            chunk_rows, chunk_columns = image[key].chunks[-2:]
            reads = {"tile": lambda k=key, r=chunk_rows, c=chunk_columns: image[k][0, :r, :c],
                     "frame": lambda k=key: image[k][0]}
            entry: dict = {"chunk": (chunk_rows, chunk_columns), "shape": image[key].shape[1:]}
            seconds: dict[str, list[float]] = {"tile": [], "frame": []}
            for _ in range(args.repeats):
                for what, read in reads.items():
                    before, began = archive.read_bytes, time.perf_counter()
                    read()
                    seconds[what].append(time.perf_counter() - began)
                    entry[f"{what}_bytes"] = archive.read_bytes - before
            entry.update({f"{what}_seconds": min(s) for what, s in seconds.items()})
            entry["of_frame"] = entry["tile_bytes"] / entry["frame_bytes"]
            out["datasets"][key] = entry
    return out


def tiled_table(tiled: dict) -> str:
    rows = ["| dataset | frame | tile chunk | tile bytes read | frame bytes read | tile / frame | tile s | frame s |",
            "|---|---|---|---|---|---|---|---|"]
    for key, e in tiled["datasets"].items():
        rows.append(f"| {key} | {'x'.join(map(str, e['shape']))} | {'x'.join(map(str, e['chunk']))} | "
                    f"{e['tile_bytes']:,} | {e['frame_bytes']:,} | {e['of_frame']:.1%} | "
                    f"{e['tile_seconds']:.3f} | {e['frame_seconds']:.3f} |")
    return "\n".join(rows)


def table(results: dict) -> str:
    rows = ["| dataset | shape | bytes read | of stored objects | of codestreams | seconds |", "|---|---|---|---|---|---|"]
    for key, e in results["datasets"].items():
        rows.append(f"| {key} | {'x'.join(map(str, e['shape']))} | {e['read_bytes']:,} | {e['of_stored']:.1%} | "
                    f"{e['of_codestreams']:.1%} | {e['seconds']:.2f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
