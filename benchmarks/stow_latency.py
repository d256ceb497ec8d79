"""STOW-RS latency, one instance per request, against the transcode itself.

A sender that pushes one instance per request (a PACS forwarding as it
receives, a modality gateway) pays the server's per-request cost each time.
`transcode serve` runs in its own process on a fresh archive; this process
POSTs each generated CT instance (512x512, 16-bit) in its own
multipart/related request over one keep-alive connection and times the
answer. Reference, measured in this process on the same files: the
transcode alone (`transcode_file`, one thread, default cross-check), the
least work a store must do. Reported: the first request (it starts the
worker processes), then the median and 90th percentile of the others and
their ratio to the reference.

    python benchmarks/stow_latency.py [--requests 50]
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import time
from pathlib import Path

from transcode.bench.dataset import write_instance
from transcode.bench.measure import save
from transcode.bench.server import free_port, start
from transcode.phantom import phantom
from transcode.transcoder import transcode_file

BOUNDARY = "stow-latency-boundary"


def post(conn: http.client.HTTPConnection, path: Path) -> float:
    body = (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes()
            + f"\r\n--{BOUNDARY}--\r\n".encode())
    began = time.perf_counter()
    conn.request("POST", "/dicomweb/studies", body=body,
                 headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'})
    response = conn.getresponse()
    answer = response.read()
    if response.status != 200:
        raise RuntimeError(f"{path.name}: {response.status} {answer[:300]!r}")
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = [write_instance(phantom(512, 512, bits=12, signed=True, seed=n), 12, root / f"{n:04d}.dcm",
                                study="1.2.826.0.1.3680043.8.498.7", number=n + 1) for n in range(args.requests)]
        alone = []
        for n, path in enumerate(files):
            began = time.perf_counter()
            transcode_file(path, root / f"out-{n}.dcm", workers=1)
            alone.append(time.perf_counter() - began)
        port = free_port()
        server = start([sys.executable, "-m", "transcode.cli", "serve", "--archive", str(root / "archive"),
                        "--port", str(port), "--log-level", "warning"], port)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            latencies = [post(conn, path) for path in files]
        finally:
            server.terminate()
    rest = sorted(latencies[1:])
    reference = statistics.median(alone[1:])
    results = {"first_request_s": latencies[0], "median_s": statistics.median(rest),
               "p90_s": rest[int(0.9 * (len(rest) - 1))], "transcode_alone_median_s": reference}
    table = "\n".join([
        "| STOW-RS, one 512x512 CT instance per request | ms | vs the transcode alone |",
        "|---|---|---|",
        f"| first request (starts the workers) | {results['first_request_s'] * 1e3:.0f} | |",
        f"| later requests, median | {results['median_s'] * 1e3:.1f} | {results['median_s'] / reference:.2f}x |",
        f"| later requests, 90th percentile | {results['p90_s'] * 1e3:.1f} | {results['p90_s'] / reference:.2f}x |",
        f"| the transcode alone, in process (median) | {reference * 1e3:.1f} | 1.00x |",
    ]) + "\n"
    save(args.out, "stow_latency", results, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
