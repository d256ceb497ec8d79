"""What decoding the source a second time costs, measured side by side.

For JPEG Lossless and RLE sources, per frame, on the same frames in one run:

- pipeline: `transcode_file` end to end on one thread with `--crosscheck
  none` (read, decode source, encode, verify, write, digests);
- open + source decode: opening the instance and its first frame through
  the pipeline's own source decoder (libjpeg-turbo, pylibjpeg-rle);
- independent decode: the second decoder alone (liblj92, pydicom's numpy
  RLE decoder), through pydicom the same way.

The ratio (pipeline + independent decode) / pipeline is what checking every
source frame would cost a one-thread ingest worker; it decides whether the
default checks every frame or a sample (README, "Performance").

    python benchmarks/source_crosscheck.py [--repeats 5] [--out results/]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom.uid import JPEGLosslessSV1, RLELossless  # noqa: E402

from fixtures.generate import Spec, write  # noqa: E402
from transcode import transcode_file  # noqa: E402
from transcode.bench.measure import machine, save  # noqa: E402
from transcode.codecs.decode import decode_independently, independent_name  # noqa: E402
from transcode.dicom.read import open_instance  # noqa: E402

CASES = {
    "CT 512x512 16-bit, JPEG Lossless SV1": Spec("CT", 512, 512, 1, 16, 12, signed=True, seed=8,
                                                 transfer_syntax=JPEGLosslessSV1),
    "CT 512x512 16-bit, RLE": Spec("CT", 512, 512, 1, 16, 12, signed=True, seed=8, transfer_syntax=RLELossless),
    "US 640x480 RGB, RLE": Spec("US", 480, 640, 1, 8, 8, samples=3, photometric="RGB", seed=9,
                                transfer_syntax=RLELossless),
}


def best(fn: Callable[[], None], repeats: int) -> tuple[float, float]:
    """Best and median of `repeats` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def measure(spec: Spec, repeats: int, tmp: Path) -> dict[str, float]:
    src = write(spec, tmp / "src.dcm")
    with open_instance(src) as instance:
        spec_ = instance.spec
        assert spec_ is not None
        codestream = next(instance.codestreams())
    options = {"rows": spec_.rows, "columns": spec_.columns, "samples_per_pixel": spec_.samples_per_pixel,
               "bits_allocated": spec_.bits_allocated, "bits_stored": spec_.bits_stored,
               "pixel_representation": spec_.pixel_representation, "planar_configuration": 0,
               "photometric_interpretation": spec_.photometric}

    def pipeline() -> None:
        result = transcode_file(src, tmp / "out.dcm", crosscheck="none", workers=1)
        assert result.outcome == "transcoded", result.detail

    def source_decode() -> None:
        with open_instance(src) as instance:
            next(instance.frames())

    def independent() -> None:
        decode_independently(spec_.transfer_syntax, codestream, **options)

    figures: dict[str, float] = {}
    for name, fn in (("pipeline", pipeline), ("source_decode", source_decode), ("independent_decode", independent)):
        figures[f"{name}_s"], figures[f"{name}_median_s"] = best(fn, repeats)
    figures["ratio"] = (figures["pipeline_s"] + figures["independent_decode_s"]) / figures["pipeline_s"]
    figures["independent_vs_source"] = figures["independent_decode_s"] / figures["source_decode_s"]
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    report = {"machine": machine(), "cases": {}}
    rows = ["| source, per frame | pipeline, 1 thread | open + source decoder | independent decoder | "
            "independent / (open + source decoder) | pipeline + independent / pipeline |", "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in CASES.items():
            f = report["cases"][name] = measure(spec, args.repeats, Path(tmp))
            rows.append(f"| {name} ({independent_name(spec.transfer_syntax)}) | {f['pipeline_s'] * 1e3:.2f} ms | "
                        f"{f['source_decode_s'] * 1e3:.2f} ms | {f['independent_decode_s'] * 1e3:.2f} ms | "
                        f"{f['independent_vs_source']:.1f}x | {f['ratio']:.2f}x |")
    save(args.out, "source_crosscheck", report, "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
