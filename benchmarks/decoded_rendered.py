"""Decoded and rendered frames against OpenJPH and Orthanc, in one run.

300 CT instances (512x512, 12 bits signed) are generated, ingested and
served by `transcode serve` (its own process); the same source files are
stored in Orthanc (Debian's 1.10, DICOMweb plugin; it keeps them
uncompressed, as received). One load generator (client threads with
keep-alive connections in this process, `transcode.bench.server.load`)
drives both, case after case, with 1 and 8 clients:

- decoded frames (a client that does not take HTJ2K: native little-endian
  pixels), ours against the bare OpenJPH decode rate of the same stored
  codestreams on 2 threads in this process (issue 13: at least 0.7x);
- full-size rendered frames (512x512 JPEG), ours against Orthanc's
  `/rendered` (issue 13: at least 1.0x); also Orthanc's decoded frames;
- thumbnails (`viewport=128,128`) and previews (`viewport=256,256`), ours,
  1 against 8 clients.

    python benchmarks/decoded_rendered.py [--files 300] [--seconds 4] [--clients 1 8]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import imagecodecs
import pydicom
from pydicom.encaps import generate_frames

from tests.peers import orthanc
from transcode.bench.measure import machine, save
from transcode.bench.server import ct_archive, free_port, start, timed_requests

DECODED = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
CASES = {  # name: (path suffix, Accept)
    "decoded": ("", DECODED),
    "rendered": ("/rendered", "image/jpeg"),
    "preview": ("/rendered?viewport=256,256", "image/jpeg"),
    "thumbnail": ("/rendered?viewport=128,128", "image/jpeg"),
}


def codestreams(archive: Path) -> list[bytes]:
    """The stored codestream of every archived frame, read with pydicom."""
    return [next(generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=1))
            for path in sorted(archive.rglob("*.dcm"))]


def openjph(streams: list[bytes], seconds: float, threads: int = 2) -> tuple[int, float, float]:
    """Frames decoded with OpenJPH (imagecodecs) on `threads` threads in about
    `seconds`; the seconds it took and the CPU seconds this process used."""
    done, began, cpu = 0, time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(threads) as pool:
        while time.perf_counter() - began < seconds:
            done += sum(1 for _ in pool.map(imagecodecs.htj2k_decode, streams[:64]))
    return done, time.perf_counter() - began, time.process_time() - cpu


def alternating(runs: dict[str, Callable[[float], tuple[int, float, float]]], seconds: float,
                slices: int = 4) -> dict[str, dict[str, float]]:
    """Frames per second and CPU milliseconds per frame of each run, given
    `seconds` each in `slices` slices taken in turn (A B, B A, ...), so that
    all see the same machine."""
    totals = {name: [0, 0.0, 0.0] for name in runs}
    names = list(runs)
    for i in range(slices):
        for name in names if i % 2 == 0 else names[::-1]:
            for k, value in enumerate(runs[name](seconds / slices)):
                totals[name][k] += value
    return {name: {"fps": done / took, "cpu_ms": cpu / done * 1e3} for name, (done, took, cpu) in totals.items()}


def process_tree_cpu(pid: int) -> float:
    """CPU seconds used so far by process `pid` and its children (a server's workers)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone since the listing
            continue
        if int(stat.parent.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def orthanc_pid(config: Path) -> int:
    """The process id of the Orthanc started with `config`."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(config).encode() in cmdline.read_bytes():
                return int(cmdline.parent.name)
        except OSError:
            continue
    raise RuntimeError("Orthanc's process was not found")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=4.0, help="per server, case and concurrency, in 4 alternating slices (default: 4)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--serve-workers", type=int, default=1, help="`transcode serve --workers` (default: 1)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine(), "files": args.files, "seconds": args.seconds,
                               "serve_workers": args.serve_workers}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        study, series = ct_archive(root, args.files)
        port = free_port()
        server = start([sys.executable, "-m", "transcode.cli", "serve", "--archive", str(root / "archive"),
                        "--port", str(port), "--log-level", "warning", "--workers", str(args.serve_workers)], port)
        config = {"Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
        try:
            with orthanc(root / "orthanc", config=config) as peer:
                for path in sorted((root / "src").glob("*.dcm")):
                    peer.post("/instances", path.read_bytes())
                sops = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
                        for p in sorted((root / "src").glob("*.dcm"))]
                orthanc_port = int(peer.url.rsplit(":", 1)[1])
                frames = {name: [f"{prefix}/studies/{study}/series/{series}/instances/{sop}/frames/1" for sop in sops]
                          for name, prefix in (("ours", "/dicomweb"), ("orthanc", "/dicom-web"))}
                streams = codestreams(root / "archive")
                for clients in args.clients:
                    for case, (suffix, accept) in CASES.items():
                        runs = {who: _http(where, pid, [p + suffix for p in frames[who]], clients, accept)
                                for who, where, pid in (("ours", port, server.pid),
                                                        ("orthanc", orthanc_port, orthanc_pid(root / "orthanc")))}
                        if case == "decoded":
                            runs["openjph"] = functools.partial(openjph, streams)
                        for who, figures in alternating(runs, args.seconds).items():
                            results[f"{case}_{who}_{clients}"] = figures
        finally:
            server.terminate()
    save(args.out, "decoded_rendered", results, table(results, args.clients))
    return 0


def _http(port: int, pid: int, paths: list[str], clients: int,
          accept: str) -> Callable[[float], tuple[int, float, float]]:
    def run(seconds: float) -> tuple[int, float, float]:
        before = process_tree_cpu(pid)
        latencies, elapsed = timed_requests(port, paths, clients, seconds, accept)
        return len(latencies), elapsed, process_tree_cpu(pid) - before

    return run


def table(results: dict[str, Any], clients: list[int]) -> str:
    rows = [("| case | clients | ours frames/s | Orthanc frames/s | ours / Orthanc | OpenJPH 2 threads | "
            "ours / OpenJPH | CPU ms per frame: ours, Orthanc, OpenJPH |"), "|---|---|---|---|---|---|---|---|"]
    for n in clients:
        for case in CASES:
            ours, theirs = results[f"{case}_ours_{n}"], results[f"{case}_orthanc_{n}"]
            bare = results.get(f"{case}_openjph_{n}")
            versus = f"{bare['fps']:.0f} | {ours['fps'] / bare['fps']:.2f}x" if bare else "— | —"
            cpu = ", ".join(f"{r['cpu_ms']:.2f}" for r in (ours, theirs, bare) if r)
            rows.append(f"| {case} | {n} | {ours['fps']:.0f} | {theirs['fps']:.0f} | "
                        f"{ours['fps'] / theirs['fps']:.2f}x | {versus} | {cpu} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
