"""Size: compression ratio per codec, per modality and per bit depth.

Ratio = raw pixel bytes (container words, as DICOM stores them natively) /
compressed bytes, summed over the frames of a group. The HTJ2K penalty is
how much larger the pipeline's codestreams are than JPEG 2000 lossless
(OpenJPEG) and JPEG-LS (CharLS) on the same frames, in percent.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from transcode.bench.codecs import BASELINE, CODECS
from transcode.bench.samples import Sample

J2K, JLS = "J2K lossless (OpenJPEG)", "JPEG-LS (CharLS)"


def run(sets: dict[str, Iterable[Sample]]) -> dict[str, Any]:
    """`sets`: named collections of samples (e.g. generated, corpus)."""
    out: dict[str, Any] = {}
    for set_name, samples in sets.items():
        frames = []
        for s in samples:
            sizes = {}
            for codec in CODECS:
                try:
                    sizes[codec.name] = len(codec.encode(s.frame))
                except Exception as exc:  # a codec that cannot take this frame (CharLS and some colour layouts)
                    sizes[codec.name] = None
                    sizes[f"{codec.name} error"] = str(exc)[:100]
            frames.append({"name": s.name, "modality": s.modality, "bits": s.bits, "raw": s.frame.nbytes, **sizes})
        out[set_name] = {"frames": frames, "by_modality": _groups(frames, "modality"), "by_bits": _groups(frames, "bits"),
                         "all": _groups(frames, None)}
    return out


def _groups(frames: list[dict[str, Any]], key: str | None) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for f in frames:
        groups["all" if key is None else str(f[key])].append(f)
    result = {}
    for name, members in sorted(groups.items()):
        ratios = {}
        for codec in CODECS:
            usable = [f for f in members if f.get(codec.name)]
            if usable:
                ratios[codec.name] = sum(f["raw"] for f in usable) / sum(f[codec.name] for f in usable)
        penalty = {}
        for other in (J2K, JLS):
            both = [f for f in members if f.get(BASELINE) and f.get(other)]
            if both:
                penalty[other] = 100.0 * (sum(f[BASELINE] for f in both) / sum(f[other] for f in both) - 1)
        result[name] = {"frames": len(members), "ratio": ratios, "htj2k_penalty_percent": penalty}
    return result
