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

COMPRESS = "pydicom Dataset.compress (J2K lossless)"


def _compress(ds: Any) -> None:
    copy.deepcopy(ds).compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")


def common(samples: list[Sample]) -> tuple[list[Sample], dict[str, list[bytes]], list[dict[str, str]]]:
    """The samples every codec compared takes, so every figure is over the
    same frames, with each codec's encoding of them (the decode timings'
    input); and why the others were left out."""
    kept: list[Sample] = []
    encoded: dict[str, list[bytes]] = {codec.name: [] for codec in CODECS}
    excluded = []
    for s in samples:
        try:
            outputs = {}
            for codec in CODECS:
                failing = codec.name
                outputs[codec.name] = codec.encode(s.frame)
        except Exception as exc:  # a codec that cannot take this frame
            excluded.append({"sample": s.name, "codec": failing, "error": _one_line(exc)})
            continue
        kept.append(s)
        for name, data in outputs.items():
            encoded[name].append(data)
    return kept, encoded, excluded


def _one_line(exc: Exception) -> str:
    """The error on one line (pydicom's own list its plugins' reasons on the next lines)."""
    return " ".join(line.strip() for line in str(exc).splitlines())[:240] or type(exc).__name__


def run(samples: list[Sample], repeats: int) -> dict[str, Any]:
    samples, encodings, excluded = common(samples)
    if not samples:
        raise ValueError("no sample frame that every codec compared can encode")
    cores = os.cpu_count() or 1
    megabytes = sum(s.megabytes for s in samples)
    megapixels = sum(s.megapixels for s in samples)
    rows: list[dict[str, Any]] = []

    def record(name: str, operation: str, threads: int, seconds: list[float]) -> None:
        passes = threads  # each thread does one pass
        rows.append({"codec": name, "operation": operation, "cores": threads, "frames": len(samples),
                     "seconds": spread(seconds),
                     "mb_per_s": spread([passes * megabytes / s for s in seconds]),
                     "mp_per_s": spread([passes * megapixels / s for s in seconds])})

    for codec in CODECS:
        pairs = list(zip(encodings[codec.name], samples, strict=True))
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

    # pydicom's own path, Dataset.compress with its pylibjpeg-openjpeg encoder, on the frames it takes
    datasets = []
    for sample in samples:
        ds = dataset_for(sample.frame, sample.bits)
        try:
            _compress(ds)
            datasets.append((ds, sample))
        except Exception as exc:
            excluded.append({"sample": sample.name, "codec": COMPRESS, "error": _one_line(exc)})
    if datasets:
        subset_mb = sum(sample.megabytes for _, sample in datasets)
        seconds = repeat(lambda: [_compress(ds) for ds, _ in datasets], max(1, repeats // 2))
        rows.append({"codec": COMPRESS, "operation": "encode", "cores": 1, "frames": len(datasets),
                     "seconds": spread(seconds), "mb_per_s": spread([subset_mb / t for t in seconds]),
                     "mp_per_s": spread([sum(x.megapixels for _, x in datasets) / t for t in seconds])})
    baseline = next(r for r in rows if r["codec"] == BASELINE and r["operation"] == "encode" and r["cores"] == 1)
    for r in rows:
        r["vs_baseline"] = r["mb_per_s"]["median"] / baseline["mb_per_s"]["median"]
    return {"megabytes_per_pass": megabytes, "megapixels_per_pass": megapixels, "frames": len(samples),
            "excluded": excluded, "rows": rows}
