"""Speed: every codec on the same decoded frames, single core and all cores,
next to the full pipeline and pydicom's own `Dataset.compress`.

A pass encodes (or decodes) every sample frame once; throughput is raw
pixel bytes (and pixels) per second of a pass; the all-cores figure runs
one pass per core at once on threads (the codecs release the GIL, as the
pipeline's frame threads rely on). Every figure is also given as a ratio to
the bare OpenJPH encode, the ceiling of what a transcode can do.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any

from pydicom.uid import JPEG2000Lossless

from transcode.bench.codecs import BASELINE, CODECS
from transcode.bench.dataset import dataset_for, write_instance
from transcode.bench.measure import on_threads, repeat, spread
from transcode.bench.samples import Sample
from transcode.transcoder import transcode_file


def run(samples: list[Sample], repeats: int) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    megabytes = sum(s.megabytes for s in samples)
    megapixels = sum(s.megapixels for s in samples)
    rows: list[dict[str, Any]] = []

    def record(name: str, operation: str, threads: int, seconds: list[float]) -> None:
        passes = threads  # each thread does one pass
        rows.append({"codec": name, "operation": operation, "cores": threads, "seconds": spread(seconds),
                     "mb_per_s": spread([passes * megabytes / s for s in seconds]),
                     "mp_per_s": spread([passes * megapixels / s for s in seconds])})

    for codec in CODECS:
        encoded = [codec.encode(s.frame) for s in samples]
        pairs = list(zip(encoded, samples, strict=True))
        for threads in sorted({1, cores}):
            if threads == 1:
                encode = lambda c=codec: [c.encode(s.frame) for s in samples]  # noqa: E731
                decode = lambda c=codec, ps=pairs: [c.decode(d, s.frame) for d, s in ps]  # noqa: E731
            else:
                encode = on_threads(lambda s, c=codec: c.encode(s.frame), samples, threads)
                decode = on_threads(lambda p, c=codec: c.decode(p[0], p[1].frame), pairs, threads)
            record(codec.name, "encode", threads, repeat(encode, repeats))
            record(codec.name, "decode", threads, repeat(decode, repeats))

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        folder = Path(tmp)
        files = [write_instance(s.frame, s.bits, folder / f"{n}.dcm") for n, s in enumerate(samples)]
        for crosscheck in ("first", "none"):
            name = f"pipeline (cross-check {crosscheck})"

            def one(path: Path, check: str = crosscheck) -> None:
                result = transcode_file(path, path.with_suffix(".out"), workers=1, crosscheck=check)
                assert result.outcome.value == "transcoded", (path, result.reason, result.detail)

            for threads in sorted({1, cores}):
                task = (lambda f=one: [f(p) for p in files]) if threads == 1 else on_threads(one, files, threads)
                record(name, "transcode", threads, repeat(task, repeats))

    # pydicom's own path: Dataset.compress with its pylibjpeg-openjpeg encoder
    datasets = [dataset_for(s.frame, s.bits) for s in samples]

    def compress() -> None:
        for ds in datasets:
            copy.deepcopy(ds).compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")

    record("pydicom Dataset.compress (J2K lossless)", "encode", 1, repeat(compress, max(1, repeats // 2)))
    baseline = next(r for r in rows if r["codec"] == BASELINE and r["operation"] == "encode" and r["cores"] == 1)
    for r in rows:
        r["vs_baseline"] = r["mb_per_s"]["median"] / baseline["mb_per_s"]["median"]
    return {"megabytes_per_pass": megabytes, "megapixels_per_pass": megapixels, "rows": rows}
