"""Frames/s served from an S3 archive (a local SeaweedFS started here)
against the folder archive, through the same `transcode serve`, in one run.

The same CT series (single-frame 512x512 16-bit instances, generated) is
ingested into a folder archive and into `s3://BUCKET/frames` with a local
catalog; one `transcode serve` process serves each. Concurrent keep-alive
clients fetch every frame in turn (full frames as stored, and level-2
prefixes), alternating between the two servers in sixteenths of each
case's time (folder, S3, S3, folder, four times: `transcode.bench.server.
paired`), so both see the same machine. Reported: frames/s, p50/p99 latency
and server CPU time per frame for each, SeaweedFS's CPU time per S3 frame,
and the S3/folder ratio (issue 15's target: at least 0.5x).

The ceiling: the same byte ranges read straight from SeaweedFS by as many
threads as there are clients, through the archive's `S3Store` (obstore,
no server in between), right after each case; `S3 / ceiling` says how
close the server comes to it, and the client's CPU time per read what one
GET costs whoever makes it.

SeaweedFS runs with its S3 gateway's chunk cache (`-s3.cacheCapacityMB`,
`--weed-cache-mb`, 0 for none), as the folder server has the page cache;
the S3 server with its own read cache of frames (`transcode serve
--read-cache-mb`, default the server's; 0 for none: every frame a GET).

    python benchmarks/s3_frames.py [--files 200] [--seconds 8] [--clients 1 8] [--weed-cache-mb 512]
                                   [--read-cache-mb MB]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.seaweed import running
from transcode.archive.objects import StoreArchive
from transcode.bench.measure import machine, save
from transcode.bench.server import ACCEPT, cpu_seconds, ct_sources, free_port, paired, start
from transcode.server.lookup import Lookup
from transcode.stores.base import ByteRange
from transcode.stores.s3 import S3Store


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=8.0, help="per case and concurrency, both servers")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--weed-cache-mb", type=int, default=512, help="SeaweedFS S3 gateway chunk cache")
    parser.add_argument("--read-cache-mb", type=int, default=None,
                        help="the S3 server's read cache (transcode serve --read-cache-mb; default: the server's)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    results: dict[str, object] = {"machine": machine(), "files": args.files, "seconds": args.seconds,
                                  "weed_cache_mb": args.weed_cache_mb, "read_cache_mb": args.read_cache_mb}
    options = [f"-s3.cacheCapacityMB={args.weed_cache_mb}"]
    with tempfile.TemporaryDirectory() as tmp, running(Path(tmp), options) as server:
        root = Path(tmp)
        env = {**os.environ, **server.env()}
        study, series = ct_sources(root / "src", args.files)
        url = f"s3://{server.bucket}/frames"
        s3_archive = ["--archive", url, "--catalog", str(root / "catalog")]
        for archive in (["--archive", str(root / "folder")], s3_archive):
            subprocess.run([sys.executable, "-m", "transcode.cli", "ingest", str(root / "src"), *archive], env=env,
                           check=True, stdout=subprocess.DEVNULL)
        ports = free_port(), free_port()
        cache = [] if args.read_cache_mb is None else ["--read-cache-mb", str(args.read_cache_mb)]
        servers = [start([sys.executable, "-m", "transcode.cli", "serve", *archive, "--port", str(port),
                          "--log-level", "warning"], port, env)
                   for port, archive in zip(ports, (["--archive", str(root / "folder")], s3_archive + cache),
                                            strict=True)]
        try:
            conn = http.client.HTTPConnection("127.0.0.1", ports[0])
            conn.request("GET", f"/dicomweb/studies/{study}/series/{series}/instances")
            sops = [i["00080018"]["Value"][0] for i in json.loads(conn.getresponse().read())]
            base = f"/dicomweb/studies/{study}/series/{series}/instances"
            full = [f"{base}/{sop}/frames/1" for sop in sops]
            cases = {"full": full, "level2": [f"{path}?level=2" for path in full]}
            pair = ((ports[0], servers[0].pid), (ports[1], servers[1].pid))
            for port in ports:  # one pass over every frame first: the caches (pages; gateway, read cache) warm
                warm = http.client.HTTPConnection("127.0.0.1", port)
                for path in full:
                    warm.request("GET", path, headers={"Accept": ACCEPT})
                    warm.getresponse().read()
            ranges = frame_ranges(root / "catalog", url, env)
            for n in args.clients:
                for case, paths in cases.items():
                    weed_before = cpu_seconds(server.pid)
                    folder, s3 = paired(pair, paths, n, args.seconds)
                    s3["weed_cpu_us"] = (cpu_seconds(server.pid) - weed_before) / s3["requests"] * 1e6
                    ceiling, client_us = raw_reads(url, env, ranges[case], n, args.seconds / 2)
                    results[f"{case}_{n}"] = {"folder": folder, "s3": s3, "ceiling": ceiling, "client_us": client_us,
                                              "ratio": s3["fps"] / folder["fps"], "of_ceiling": s3["fps"] / ceiling}
        finally:
            for process in servers:
                process.terminate()
                process.wait(30)
    table = [("| frames | clients | folder frames/s | S3 frames/s | S3 / folder | ceiling reads/s | S3 / ceiling | "
              "folder p50 ms | S3 p50 ms | folder CPU us/frame | S3 CPU us/frame | SeaweedFS CPU us/frame | "
              "ceiling client CPU us/read |"), "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, row in results.items():
        if not isinstance(row, dict) or "ratio" not in row:
            continue
        case, clients = key.rsplit("_", 1)
        f, s = row["folder"], row["s3"]
        table.append(f"| {case} | {clients} | {f['fps']:.0f} | {s['fps']:.0f} | {row['ratio']:.2f}x | "
                     f"{row['ceiling']:.0f} | {row['of_ceiling']:.2f}x | {f['p50_ms']:.1f} | {s['p50_ms']:.1f} | "
                     f"{f['cpu_us']:.0f} | {s['cpu_us']:.0f} | {s['weed_cpu_us']:.0f} | {row['client_us']:.0f} |")
    save(args.out, "s3_frames", results, "\n".join(table))
    return 0


def frame_ranges(catalog: Path, url: str, env: dict[str, str]) -> dict[str, list[tuple[str, ByteRange]]]:
    """Per case, the (key, byte range) each request of it reads from the store."""
    with StoreArchive(S3Store.from_url(url, read_only=True, env=env), catalog, name=url, read_only=True) as archive:
        rows = list(archive.index.instances())
        lookup = Lookup(archive.index)
        stored = [lookup.instance(r.study_uid, r.series_uid, r.sop_uid) for r in rows]
    full = [(s.row.path, ByteRange(s.spans[0][0], sum(s.spans[0]))) for s in stored]
    level2 = [(s.row.path, ByteRange(s.spans[0][0], s.spans[0][0] + s.index(1).level_end(2))) for s in stored]
    return {"full": full, "level2": level2}


def raw_reads(url: str, env: dict[str, str], ranges: list[tuple[str, ByteRange]], threads: int,
              seconds: float) -> tuple[float, float]:
    """Ranged GETs per second from `threads` threads cycling through `ranges`
    with `S3Store.get_range` (obstore), no server in between, and this
    process's CPU time per GET (the client's cost of one)."""
    store = S3Store.from_url(url, read_only=True, env=env)
    stop = time.perf_counter() + seconds

    def reader(offset: int) -> int:
        n = offset
        while time.perf_counter() < stop:
            key, byte_range = ranges[n % len(ranges)]
            store.get_range(key, byte_range)
            n += 1
        return n - offset

    began, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(threads) as pool:
        done = sum(pool.map(reader, range(threads)))
    return done / (time.perf_counter() - began), (time.process_time() - cpu) / done * 1e6


if __name__ == "__main__":
    sys.exit(main())
