"""The working tree's embedded default (folder + SQLite) against an earlier
commit's, on the same files, alternated in one run.

Issue 15 put the archive behind a Store and a Catalog interface; its
condition is that the embedded default stays as fast as before. This checks
out `--rev` (default: main just before the Store interface was merged) into
a temporary git worktree and runs the same work with both codes, each under
this interpreter and virtual environment, in alternating order:

- ingest: a CT series of `--ct-files` single-frame 512x512 instances with a
  scanner's clinical header (`fixtures.generate.write_ct_series`) into a
  fresh folder archive, `transcode ingest --workers 2 --threads 1`; wall
  seconds of the command and steady seconds per file (from the ledger);
- serving: each code's `transcode serve` over its own archive of the same
  files, full frames as stored and level-2 prefixes, 1 and 8 clients,
  alternated in sixteenths of each case (`transcode.bench.server.paired`):
  frames/s and the server process's CPU time per frame.

Ratios are this tree over `--rev`, throughput (above 1: faster now).

    python benchmarks/against_commit.py [--rev 8180296^1] [--ct-files 300] [--rounds 3] [--seconds 8]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fixtures.generate import write_ct_series
from transcode.bench.measure import machine, save, steady_seconds
from transcode.bench.server import ACCEPT, free_port, paired, start

#: main before the Store interface was merged (issue 15's first step)
BASE = "8180296^1"


def command(code: Path, *args: str) -> list[str]:
    """`transcode ARGS` run from the checkout `code` (its package first on the path)."""
    program = (f"import sys; sys.path.insert(0, {str(code)!r}); "
               "from transcode.cli import main; sys.exit(main())")
    return [sys.executable, "-c", program, *args]


def ingest(code: Path, src: Path, archive: Path, files: int) -> tuple[float, float]:
    """Wall seconds of one `transcode ingest` and its steady seconds per file."""
    started = time.perf_counter()
    subprocess.run(command(code, "ingest", str(src), "--archive", str(archive), "--workers", "2", "--threads", "1"),
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=code)
    return time.perf_counter() - started, steady_seconds(archive, files)


def frame_paths(port: int, study: str, series: str) -> list[str]:
    """Every instance's first frame, from the server's own QIDO answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    base = f"/dicomweb/studies/{study}/series/{series}/instances"
    conn.request("GET", base)
    return sorted(f"{base}/{item['00080018']['Value'][0]}/frames/1" for item in json.loads(conn.getresponse().read()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default=BASE, help="the commit to compare with (default: %(default)s)")
    parser.add_argument("--ct-files", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="per serving case and concurrency, both servers")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    rev = subprocess.run(["git", "rev-parse", "--short", args.rev], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout.strip()
    results: dict[str, object] = {"machine": machine(), "rev": rev, "files": args.ct_files}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = root / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), rev], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            codes = {"base": base, "now": ROOT}
            src = root / "src"
            first = pydicom.dcmread(write_ct_series(src, args.ct_files)[0], stop_before_pixels=True)
            runs: dict[str, list[tuple[float, float]]] = {name: [] for name in codes}
            for n in range(args.rounds):
                for name in (("base", "now") if n % 2 == 0 else ("now", "base")):
                    runs[name].append(ingest(codes[name], src, root / f"{name}-{n}", args.ct_files))
            ingest_table = {name: {"wall_s": statistics.median(w for w, _ in rows),
                                   "steady_ms": statistics.median(s for _, s in rows) * 1e3, "runs": rows}
                            for name, rows in runs.items()}
            results["ingest"] = ingest_table
            ports = {name: free_port() for name in codes}
            servers = {name: start(command(code, "serve", "--archive", str(root / f"{name}-0"), "--port",
                                           str(ports[name]), "--log-level", "warning"), ports[name])
                       for name, code in codes.items()}
            try:
                uids = first.StudyInstanceUID, first.SeriesInstanceUID
                full = frame_paths(ports["now"], *uids)
                assert len(full) == args.ct_files and full == frame_paths(ports["base"], *uids), \
                    "the two servers answer other instances"
                for port in ports.values():  # every frame once, unmeasured: both servers warm
                    warm = http.client.HTTPConnection("127.0.0.1", port)
                    for path in full:
                        warm.request("GET", path, headers={"Accept": ACCEPT})
                        warm.getresponse().read()
                pair = ((ports["base"], servers["base"].pid), (ports["now"], servers["now"].pid))
                for clients in args.clients:
                    for case, paths in (("full", full), ("level2", [f"{p}?level=2" for p in full])):
                        before, now = paired(pair, paths, clients, args.seconds)
                        results[f"{case}_{clients}"] = {"base": before, "now": now, "ratio": now["fps"] / before["fps"]}
            finally:
                for process in servers.values():
                    process.terminate()
                    process.wait(30)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False,
                           capture_output=True)
    title = (f"`{rev}` (base) against this tree, {args.ct_files} CT files, median of {args.rounds} alternated "
             "ingest rounds; serving alternated in sixteenths")
    rows = [title, "",
            "| work | base | now | now / base (throughput) |", "|---|---|---|---|"]
    b, w = ingest_table["base"], ingest_table["now"]
    rows.append(f"| ingest, wall s | {b['wall_s']:.2f} | {w['wall_s']:.2f} | {b['wall_s'] / w['wall_s']:.2f}x |")
    rows.append(f"| ingest, steady ms/file | {b['steady_ms']:.2f} | {w['steady_ms']:.2f} | "
                f"{b['steady_ms'] / w['steady_ms']:.2f}x |")
    for key, row in results.items():
        if isinstance(row, dict) and "ratio" in row:
            case, clients = key.rsplit("_", 1)
            rows.append(f"| {case} frames, {clients} client(s): frames/s (CPU us/frame) | {row['base']['fps']:.0f} "
                        f"({row['base']['cpu_us']:.0f}) | {row['now']['fps']:.0f} ({row['now']['cpu_us']:.0f}) | "
                        f"{row['ratio']:.2f}x |")
    save(args.out, "against_commit", results, "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
