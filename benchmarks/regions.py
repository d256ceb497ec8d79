"""Regions of a tiled frame: bytes read, and IIIF tiles against frames, in one run.

A 4096x4096 12-bit phantom frame is ingested with the default settings
(1024-pixel tiles: 4 x 4, 6 decompositions), and beside it the same pixels
as 16 single-frame 1024x1024 instances (untiled), so that a stored tile and
a stored frame hold the same pixels in about the same bytes.

- Bytes read (through the archive, counted): a 1/16-area region (1024x1024)
  at full resolution and at level D - 1 (half resolution), tile-aligned (as
  IIIF viewers ask) and straddling four tiles, against the whole frame.
- Throughput on loopback, one `transcode serve` process, cases alternated in
  slices so that all see the same machine: the frames route (as stored and
  decoded) over the 16 small instances; the region route (as stored) and
  IIIF tiles (jpg, windowed) over the 16 full-resolution tiles of the large
  frame. Targets (issue 13): regions at most 1/8 (full) and 1/24 (half) of
  the frame's bytes; IIIF tiles/s at least 0.5x frames/s for the same bytes.

    python benchmarks/regions.py [--seconds 8] [--clients 1 4]
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from transcode.bench.counting import CountingArchive
from transcode.bench.dataset import write_instance
from transcode.bench.measure import machine, save
from transcode.bench.server import free_port, load, start
from transcode.phantom import phantom
from transcode.server import regions
from transcode.server.frames import FrameReader
from transcode.server.lookup import Lookup

STUDY = "1.2.826.0.1.3680043.8.498.13"
SIDE, TILE = 4096, 1024
AS_STORED = "application/octet-stream; transfer-syntax=*"
DECODED = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'


def bytes_read(root: Path, sop: str) -> dict[str, Any]:
    """Bytes each region read costs, against the stored frame's length."""
    with CountingArchive(root, read_only=True) as archive:
        stored = Lookup(archive.index).instance(STUDY, "1.2.826.0.1.3680043.8.498.14", sop)
        reader = FrameReader(archive)
        index = stored.index(1)
        frame = stored.spans[0][1]
        out: dict[str, Any] = {"frame_bytes": frame, "tiles": index.tiles, "decompositions": index.decompositions}
        cases = {"aligned": (TILE, TILE), "straddling": (TILE + TILE // 2, TILE + TILE // 2)}
        for name, (x, y) in cases.items():
            for label, level in (("full", None), ("half", index.decompositions - 1)):
                archive.read_bytes = 0
                body = regions.cut_out(reader, stored, 1, regions.Box(x, y, SIDE // 4, SIDE // 4), level)
                out[f"{name}_{label}"] = {"read": archive.read_bytes, "sent": len(body),
                                          "fraction": archive.read_bytes / frame}
    return out


def rates(port: int, cases: dict[str, tuple[list[str], str]], clients: int, seconds: float) -> dict[str, Any]:
    """Requests per second of each case, in 4 rounds of alternating slices."""
    done = dict.fromkeys(cases, 0.0)
    spent = dict.fromkeys(cases, 0.0)
    for _ in range(4):
        for name, (paths, accept) in cases.items():
            result = load(port, paths, clients, seconds / 4, accept)
            done[name] += result["requests"]
            spent[name] += result["requests"] / result["fps"]
    return {name: done[name] / spent[name] for name in cases}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per case and concurrency (default: 8)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine(), "note": "noisy shared machine; cases alternated in one run"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        big_series, small_series = "1.2.826.0.1.3680043.8.498.14", "1.2.826.0.1.3680043.8.498.15"
        (root / "src").mkdir()
        pixels = phantom(SIDE, SIDE, bits=12, signed=False, seed=13).astype("u2")
        write_instance(pixels, 12, root / "src" / "big.dcm", study=STUDY, series=big_series)
        for n in range(16):
            y, x = divmod(n, 4)
            tile = pixels[y * TILE:(y + 1) * TILE, x * TILE:(x + 1) * TILE].copy()
            write_instance(tile, 12, root / "src" / f"tile{n:02d}.dcm", study=STUDY, series=small_series, number=n)
        subprocess.run([sys.executable, "-m", "transcode.cli", "ingest", str(root / "src"), "--archive",
                        str(root / "archive")], check=True, stdout=subprocess.DEVNULL)
        port = free_port()
        server = start([sys.executable, "-m", "transcode.cli", "serve", "--archive", str(root / "archive"),
                        "--port", str(port), "--log-level", "warning"], port)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port)

            def sops(series: str) -> list[str]:
                conn.request("GET", f"/dicomweb/studies/{STUDY}/series/{series}/instances")
                return [i["00080018"]["Value"][0] for i in json.loads(conn.getresponse().read())]

            big = sops(big_series)[0]
            results["bytes"] = bytes_read(root / "archive", big)
            small = [f"/dicomweb/studies/{STUDY}/series/{small_series}/instances/{sop}/frames/1"
                     for sop in sops(small_series)]
            origins = [(x * TILE, y * TILE) for y in range(4) for x in range(4)]
            region = [f"/dicomweb/studies/{STUDY}/series/{big_series}/instances/{big}/frames/1/region"
                      f"?x={x}&y={y}&w={TILE}&h={TILE}" for x, y in origins]
            iiif = [f"/iiif/studies/{STUDY}/series/{big_series}/instances/{big}/frames/1/{x},{y},{TILE},{TILE}/"
                    f"{TILE},{TILE}/0/default.jpg" for x, y in origins]
            cases = {"frames_as_stored": (small, AS_STORED), "frames_decoded": (small, DECODED),
                     "region_as_stored": (region, AS_STORED), "iiif_tiles_jpg": (iiif, "*/*")}
            for clients in args.clients:
                results[f"rates_{clients}"] = rates(port, cases, clients, args.seconds)
        finally:
            server.terminate()
    save(args.out, "regions", results, table(results, args.clients))
    return 0


def table(results: dict[str, Any], clients: list[int]) -> str:
    b = results["bytes"]
    lines = [f"Frame {SIDE}x{SIDE}, {b['tiles']} tiles, {b['frame_bytes']:,} bytes stored", "",
             "| 1/16-area region | level | bytes read | of the frame | target |", "|---|---|---|---|---|"]
    for name in ("aligned", "straddling"):
        for label, target in (("full", "1/8"), ("half", "1/24")):
            case = b[f"{name}_{label}"]
            lines.append(f"| {name} | {label} | {case['read']:,} | 1/{1 / case['fraction']:.1f} | {target} |")
    header = ("| clients | frames as stored /s | frames decoded /s | regions as stored /s | IIIF tiles /s | "
              "IIIF / frames decoded | IIIF / frames as stored |")
    lines += ["", header, "|---|---|---|---|---|---|---|"]
    for n in clients:
        r = results[f"rates_{n}"]
        lines.append(f"| {n} | {r['frames_as_stored']:.0f} | {r['frames_decoded']:.1f} | {r['region_as_stored']:.0f} | "
                     f"{r['iiif_tiles_jpg']:.1f} | {r['iiif_tiles_jpg'] / r['frames_decoded']:.2f}x | "
                     f"{r['iiif_tiles_jpg'] / r['frames_as_stored']:.3f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
