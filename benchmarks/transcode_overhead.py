"""What the pipeline costs on top of the codec, measured side by side.

For each case, on the same frames in the same run, alternating to share the
machine's noise:

- bare: OpenJPH encode + decode of every frame, one after the other, on one
  core, with exactly the settings the pipeline uses (the codec's own work);
- pipeline: `transcode_file` end to end (read, decode source, encode, verify,
  OpenJPEG cross-check as configured, write, fsync, digest).

Targets (issue 2): one 2048x2048 16-bit frame <= 1.10 x bare; a 40-frame
512x512 instance <= 0.60 x bare (frames run on all cores).

    python benchmarks/transcode_overhead.py [--repeats 7] [--out results/]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import imagecodecs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures.generate import Spec, frame_arrays, write  # noqa: E402
from transcode import transcode_file  # noqa: E402
from transcode.codecs import htj2k  # noqa: E402
from transcode.codecs.htj2k import EncodeSettings  # noqa: E402

CASES = {
    "single 2048x2048 16-bit": (Spec("CR", 2048, 2048, 1, 16, 12, seed=7), 1.10),
    "40 x 512x512 16-bit": (Spec("CT", 512, 512, 40, 16, 12, signed=True, seed=8), 0.60),
}


def bare_codec(spec: Spec) -> Callable[[], None]:
    frames = list(frame_arrays(spec))
    settings = EncodeSettings()

    def run() -> None:
        for frame in frames:
            data, index = htj2k.encode(frame, colour_transform=False, settings=settings)
            htj2k.decode(data)

    return run


def pipeline(src: Path, dst: Path, crosscheck: str) -> Callable[[], None]:
    def run() -> None:
        result = transcode_file(src, dst, crosscheck=crosscheck)
        assert result.outcome == "transcoded", result.detail

    return run


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(spec: Spec, repeats: int, tmp: Path) -> dict[str, list[float]]:
    src = write(spec, tmp / "src.dcm")
    runs = {
        "bare": bare_codec(spec),
        "pipeline": pipeline(src, tmp / "out.dcm", "none"),
        "pipeline+openjpeg": pipeline(src, tmp / "out.dcm", "first"),
    }
    for fn in runs.values():  # warm caches, thread pools, imports
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "imagecodecs": imagecodecs.__version__},
        "cases": {},
    }
    rows = ["| case | bare codec (s, median) | pipeline / bare | with OpenJPEG cross-check / bare | target |",
            "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, (spec, target) in CASES.items():
            times = measure(spec, args.repeats, Path(tmp))
            med = {k: statistics.median(v) for k, v in times.items()}
            ratio = med["pipeline"] / med["bare"]
            ratio_x = med["pipeline+openjpeg"] / med["bare"]
            report["cases"][name] = {"seconds": times, "median": med, "ratio": ratio,
                                     "ratio_with_crosscheck": ratio_x, "target": target}
            rows.append(f"| {name} | {med['bare']:.4f} | {ratio:.2f}x | {ratio_x:.2f}x | <= {target:.2f}x |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "transcode_overhead.json").write_text(json.dumps(report, indent=2))
    table = "\n".join(rows)
    (args.out / "transcode_overhead.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
