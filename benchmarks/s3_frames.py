"""Frames/s served from an S3 archive (a local SeaweedFS started here)
against the folder archive, through the same `transcode serve`, in one run.

The same CT series (single-frame 512x512 16-bit instances, generated) is
ingested into a folder archive and into `s3://BUCKET/frames` with a local
catalog; one `transcode serve` process serves each. Concurrent keep-alive
clients fetch every frame in turn (full frames as stored, and level-2
prefixes), alternating between the two servers in sixteenths of each
case's time (folder, S3, S3, folder, four times: `transcode.bench.server.
paired`), so both see the same machine. Reported: frames/s, p50/p99 latency
and server CPU time per frame for each, and the S3/folder ratio (issue 15's
target: at least 0.5x).

    python benchmarks/s3_frames.py [--files 200] [--seconds 8] [--clients 1 8]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.seaweed import running
from transcode.bench.measure import machine, save
from transcode.bench.server import ct_sources, free_port, paired, start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=8.0, help="per case and concurrency, both servers")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    results: dict[str, object] = {"machine": machine(), "files": args.files, "seconds": args.seconds}
    with tempfile.TemporaryDirectory() as tmp, running(Path(tmp)) as server:
        root = Path(tmp)
        env = {**os.environ, **server.env()}
        study, series = ct_sources(root / "src", args.files)
        url = f"s3://{server.bucket}/frames"
        for archive in (["--archive", str(root / "folder")], ["--archive", url, "--catalog", str(root / "catalog")]):
            subprocess.run([sys.executable, "-m", "transcode.cli", "ingest", str(root / "src"), *archive], env=env,
                           check=True, stdout=subprocess.DEVNULL)
        ports = free_port(), free_port()
        servers = [start([sys.executable, "-m", "transcode.cli", "serve", *archive, "--port", str(port),
                          "--log-level", "warning"], port, env)
                   for port, archive in zip(ports, (["--archive", str(root / "folder")],
                                                    ["--archive", url, "--catalog", str(root / "catalog")]),
                                            strict=True)]
        try:
            conn = http.client.HTTPConnection("127.0.0.1", ports[0])
            conn.request("GET", f"/dicomweb/studies/{study}/series/{series}/instances")
            sops = [i["00080018"]["Value"][0] for i in json.loads(conn.getresponse().read())]
            base = f"/dicomweb/studies/{study}/series/{series}/instances"
            full = [f"{base}/{sop}/frames/1" for sop in sops]
            cases = {"full": full, "level2": [f"{path}?level=2" for path in full]}
            pair = ((ports[0], servers[0].pid), (ports[1], servers[1].pid))
            for n in args.clients:
                for case, paths in cases.items():
                    folder, s3 = paired(pair, paths, n, args.seconds)
                    results[f"{case}_{n}"] = {"folder": folder, "s3": s3, "ratio": s3["fps"] / folder["fps"]}
        finally:
            for process in servers:
                process.terminate()
                process.wait(30)
    table = [("| frames | clients | folder frames/s | S3 frames/s | S3 / folder | folder p50 ms | S3 p50 ms | "
              "folder CPU us/frame | S3 CPU us/frame |"), "|---|---|---|---|---|---|---|---|---|"]
    for key, row in results.items():
        if not isinstance(row, dict) or "ratio" not in row:
            continue
        case, clients = key.rsplit("_", 1)
        f, s = row["folder"], row["s3"]
        table.append(f"| {case} | {clients} | {f['fps']:.0f} | {s['fps']:.0f} | {row['ratio']:.2f}x | "
                     f"{f['p50_ms']:.1f} | {s['p50_ms']:.1f} | {f['cpu_us']:.0f} | {s['cpu_us']:.0f} |")
    save(args.out, "s3_frames", results, "\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
