"""`transcode bench`: how fast, how small, how soon an image shows.

Runs on generated phantoms by default, or on the DICOM files under the
paths given; writes results.json (every raw figure and the machine),
results.md (the tables, also printed) and PNG charts into `out`. Each part
compares codecs side by side on the same decoded frames in the same run, so
the ratios hold on a noisy machine; `quick` shrinks every part to fit in
under two minutes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transcode.bench import charts, progressive, report, samples, scaling, size, speed


@dataclass(frozen=True)
class Plan:
    repeats: int
    sizes: list[int]  # square frame sides for the progressive and frame-size parts
    thread_frames: tuple[int, int]  # frames, side of the instance for the threads curve
    ingest_files: int  # 512x512 CT files for the ingest workers curve
    memory_frames: list[int]  # frame counts (of 1024x1024) for peak RSS
    server: tuple[int, float, list[int]]  # files, seconds per case, client counts


QUICK = Plan(3, [256, 512, 1024], (8, 512), 30, [1, 8, 32], (30, 1.0, [1, 4]))
FULL = Plan(7, [256, 512, 1024, 2048, 4096], (32, 1024), 200, [1, 16, 64, 128], (300, 5.0, [1, 4, 8]))
MAX_FILE_SAMPLES = 200


def run(paths: Sequence[str | os.PathLike[str]], out: Path, *, quick: bool = False, server: bool = True,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    from transcode.bench.measure import machine

    plan = QUICK if quick else FULL
    out.mkdir(parents=True, exist_ok=True)
    if paths:
        frames = list(samples.from_files(paths, limit=MAX_FILE_SAMPLES))
        if not frames:
            raise ValueError("no usable frames (8-16 bits stored, integer pixels) under the paths given")
        sets = {"your files": frames}
    else:
        frames = samples.generated(quick)
        sets = {"generated": frames}
        corpus = samples.corpus()
        if corpus is not None:
            sets["corpus"] = list(samples.from_files([corpus], limit=MAX_FILE_SAMPLES))
    results: dict[str, Any] = {"machine": machine(), "quick": quick, "paths": [str(p) for p in paths],
                               "samples": [{"name": s.name, "modality": s.modality, "bits": s.bits,
                                            "shape": list(s.frame.shape)} for s in frames]}
    started = time.perf_counter()

    def part(name: str, fn: Callable[[], Any]) -> None:
        began = time.perf_counter()
        log(f"bench: {name} ...")
        results[name] = fn()
        log(f"bench: {name} done in {time.perf_counter() - began:.1f} s")

    part("speed", lambda: speed.run(frames[:MAX_FILE_SAMPLES] if paths else frames, plan.repeats))
    part("size", lambda: size.run(sets))
    part("progressive", lambda: progressive.run(plan.sizes, plan.repeats))
    part("scaling", lambda: {"threads": scaling.threads(*plan.thread_frames, plan.repeats),
                             "ingest_workers": scaling.ingest_workers(plan.ingest_files, 512),
                             "frame_sizes": scaling.frame_sizes(plan.sizes, plan.repeats),
                             "memory": scaling.memory(plan.memory_frames, 1024)})
    if server:
        from transcode.bench import server as server_bench

        part("server", lambda: server_bench.run(*plan.server))
    results["seconds"] = time.perf_counter() - started
    m = results["machine"]
    results["charts"] = [p.name for p in (
        charts.throughput(results["speed"], m, out / "throughput_by_codec.png"),
        charts.ratios(results["size"], m, out / "ratio_by_codec_and_modality.png"),
        charts.levels(results["progressive"], m, out / "bytes_per_level.png"),
        charts.scaling(results["scaling"], m, out / "scaling.png"),
    )]
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(report.markdown(results))
    return results
