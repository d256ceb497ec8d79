"""Ranged reads from S3: obstore (through `transcode.stores.s3.S3Store`, what
the archive uses) against fsspec/s3fs, on a local SeaweedFS started here.

Many small ranges (4-64 KiB, the size of a frame or a resolution level) at
random offsets in a few large objects, read one range per request on 1 and
8 threads, and the same ranges in several-ranges-per-call batches of 16
(`get_ranges` / `cat_ranges`). The clients alternate, round after round, in
one run on the same server and data; the table gives the median of the
rounds and the obstore/s3fs ratio. Loopback only: it measures the clients'
own cost per request, not a network.

    python benchmarks/s3_ranged_reads.py [--objects 4] [--mb 32] [--ranges 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import s3fs

from tests.seaweed import Seaweed, running
from transcode.bench.measure import machine, save
from transcode.stores.base import ByteRange
from transcode.stores.s3 import S3Store

Request = tuple[str, int, int]
BATCH = 16


def requests(keys: Sequence[str], size: int, count: int, seed: int = 1) -> list[Request]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        length = rng.randint(4 << 10, 64 << 10)
        start = rng.randrange(0, size - length)
        out.append((rng.choice(keys), start, start + length))
    return out


def clients(server: Seaweed, prefix: str) -> dict[str, tuple[Callable[[Request], int], Callable[[list[Request]], int]]]:
    """name -> (one range per call, several ranges of one object per call); each returns bytes read."""
    store = S3Store(server.bucket, prefix, env=server.env())
    fs = s3fs.S3FileSystem(key=server.access_key, secret=server.secret_key, endpoint_url=server.endpoint,
                           client_kwargs={"region_name": server.region}, skip_instance_cache=True)
    base = f"{server.bucket}/{prefix}"

    def obstore_one(r: Request) -> int:
        return len(store.get_range(r[0], ByteRange(r[1], r[2])))

    def obstore_many(batch: list[Request]) -> int:
        return sum(map(len, store.get_ranges(batch[0][0], [ByteRange(s, e) for _, s, e in batch])))

    def s3fs_one(r: Request) -> int:
        return len(fs.cat_file(f"{base}/{r[0]}", start=r[1], end=r[2]))

    def s3fs_many(batch: list[Request]) -> int:
        paths = [f"{base}/{key}" for key, _, _ in batch]
        return sum(map(len, fs.cat_ranges(paths, [s for _, s, _ in batch], [e for _, _, e in batch])))

    return {"obstore": (obstore_one, obstore_many), "s3fs": (s3fs_one, s3fs_many)}


def timed(threads: int, work: Callable[[object], int], items: Sequence[object]) -> float:
    started = time.perf_counter()
    if threads == 1:
        total = sum(map(work, items))
    else:
        with ThreadPoolExecutor(threads) as pool:
            total = sum(pool.map(work, items))
    assert total > 0
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=4)
    parser.add_argument("--mb", type=int, default=32, help="size of each object (MiB)")
    parser.add_argument("--ranges", type=int, default=400, help="ranges per case and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    size = args.mb << 20
    with tempfile.TemporaryDirectory() as tmp, running(Path(tmp)) as server:
        prefix = "bench"
        writer = S3Store(server.bucket, prefix, env=server.env())
        keys = [f"objects/{n}.dcm" for n in range(args.objects)]
        for n, key in enumerate(keys):
            writer.put(key, random.Random(n).randbytes(size))
        singles = requests(keys, size, args.ranges)
        # batches of ranges of one object each (a frame's levels, a region's tiles)
        batches = [[(keys[n % len(keys)], s, e) for _, s, e in singles[i:i + BATCH]]
                   for n, i in enumerate(range(0, len(singles), BATCH))]
        made = clients(server, prefix)
        cases = [(name, "one range per request", threads) for threads in (1, 8) for name in made] + \
                [(name, f"{BATCH} ranges per call", threads) for threads in (1, 8) for name in made]
        seconds: dict[tuple[str, str, int], list[float]] = {case: [] for case in cases}
        for round_ in range(args.rounds + 1):  # round 0 warms connections and is not counted
            for case in cases:
                name, kind, threads = case
                one, many = made[name]
                took = timed(threads, one, singles) if kind.startswith("one") else timed(threads, many, batches)
                if round_:
                    seconds[case].append(took)
    rows = []
    for kind in ("one range per request", f"{BATCH} ranges per call"):
        for threads in (1, 8):
            count = len(singles)
            rate = {name: count / statistics.median(seconds[(name, kind, threads)]) for name in made}
            rows.append({"kind": kind, "threads": threads, "ranges_per_s": rate,
                         "ratio_obstore_to_s3fs": rate["obstore"] / rate["s3fs"]})
    table = ["| reads | threads | obstore ranges/s | s3fs ranges/s | obstore / s3fs |", "|---|---|---|---|---|"]
    table += [f"| {r['kind']} | {r['threads']} | {r['ranges_per_s']['obstore']:.0f} | "
              f"{r['ranges_per_s']['s3fs']:.0f} | {r['ratio_obstore_to_s3fs']:.2f}x |" for r in rows]
    results = {"machine": machine(), "objects": args.objects, "object_mb": args.mb, "ranges": args.ranges,
               "rounds": args.rounds, "rows": rows}
    save(args.out, "s3_ranged_reads", results, "\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
