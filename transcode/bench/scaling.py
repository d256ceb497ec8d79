"""Scaling: throughput against thread count and frame size, peak memory
against instance size.

- Threads: one multi-frame instance transcoded with 1, 2, ... threads over
  its frames (`transcode_file(workers=n)`), next to the bare OpenJPH encode
  of the same frames on as many threads.
- Ingest workers: a folder of single-frame CT files ingested with 1, 2, ...
  worker processes (one thread each), files per second in the steady state
  (from the ledger: no interpreter start-up or worker spawn).
- Frame size: bare encode and decode megapixels per second for square
  frames of 256 to 4096 pixels, and the full pipeline on each.
- Memory: peak RSS of `transcode convert` (a child process, sampled every
  10 ms) on instances of growing frame counts: it should stay flat, bounded
  by frames in flight, not by the instance.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from transcode.bench.codecs import CODECS
from transcode.bench.dataset import write_instance
from transcode.bench.measure import ingest_run, on_threads, peak_rss, repeat, steady_seconds
from transcode.phantom import phantom
from transcode.transcoder import transcode_file


def _frames(count: int, side: int) -> np.ndarray:
    return np.stack([phantom(side, side, bits=12, signed=False, seed=n) for n in range(count)])


def threads(count: int, side: int, repeats: int) -> list[dict[str, Any]]:
    frames = _frames(count, side)
    megapixels = count * side * side / 1e6
    encode = CODECS[0].encode
    out = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        src = write_instance(frames, 12, Path(tmp) / "src.dcm")
        for n in range(1, (os.cpu_count() or 1) + 1):
            pipeline = min(repeat(lambda w=n: transcode_file(src, Path(tmp) / "out.dcm", workers=w,
                                                             crosscheck="none"), repeats))
            chunk = list(frames[: max(1, count // n)])
            bare = min(repeat(on_threads(encode, chunk, n), repeats))  # n threads, count frames in all
            out.append({"threads": n, "pipeline_mp_per_s": megapixels / pipeline,
                        "bare_encode_mp_per_s": n * len(chunk) * side * side / 1e6 / bare})
    return out


def ingest_workers(files: int, side: int) -> list[dict[str, Any]]:
    out = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for n in range(files):
            write_instance(phantom(side, side, bits=12, signed=True, seed=n), 12, src / f"{n:04d}.dcm")
        for workers in range(1, (os.cpu_count() or 1) + 1):
            archive = Path(tmp) / f"archive-{workers}"
            seconds, peak = ingest_run(src, archive, workers, "none")
            out.append({"workers": workers, "files_per_s": 1 / steady_seconds(archive, files),
                        "command_seconds": seconds, "peak_rss_mb": peak / 1e6})
    return out


def frame_sizes(sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    codec = CODECS[0]
    out = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for side in sizes:
            frame = phantom(side, side, bits=12, signed=False, seed=side)
            data = codec.encode(frame)
            src = write_instance(frame, 12, Path(tmp) / f"{side}.dcm")
            mp = side * side / 1e6
            out.append({
                "side": side,
                "encode_mp_per_s": mp / min(repeat(lambda f=frame: codec.encode(f), repeats)),
                "decode_mp_per_s": mp / min(repeat(lambda d=data, f=frame: codec.decode(d, f), repeats)),
                "pipeline_mp_per_s": mp / min(repeat(lambda s=src: transcode_file(s, s.with_suffix(".out"), workers=1,
                                                                                  crosscheck="none"), repeats)),
            })
    return out


def memory(frame_counts: list[int], side: int) -> list[dict[str, Any]]:
    out = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for count in frame_counts:
            src = Path(tmp) / f"{count}.dcm"
            write_instance(_frames(count, side), 12, src)
            seconds, peak = peak_rss([sys.executable, "-m", "transcode.cli", "convert", str(src),
                                      str(Path(tmp) / f"{count}.out.dcm"), "--workers", "1"])
            out.append({"frames": count, "instance_mb": src.stat().st_size / 1e6, "peak_rss_mb": peak / 1e6,
                        "seconds": seconds})
            src.unlink()
    return out
