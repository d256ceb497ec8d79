"""PNG charts of a benchmark run, each readable without the text: a title
that says what is compared, labelled axes with units, the machine in a
footnote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig: Any, path: Path, machine: dict[str, Any]) -> Path:
    fig.text(0.99, 0.01, f"{machine['cpu']}, {machine['cores']} cores", ha="right", va="bottom", fontsize=7,
             color="grey")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def throughput(speed: dict[str, Any], machine: dict[str, Any], path: Path) -> Path:
    rows = [r for r in speed["rows"] if r["cores"] == 1] + [r for r in speed["rows"] if r["cores"] > 1]
    labels = [f"{r['codec']} {r['operation']} ({r['cores']} core{'s' if r['cores'] > 1 else ''})" for r in rows]
    median = np.array([r["mb_per_s"]["median"] for r in rows])
    low = median - np.array([r["mb_per_s"]["min"] for r in rows])
    high = np.array([r["mb_per_s"]["max"] for r in rows]) - median
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(rows) + 1.5))
    colours = ["tab:blue" if "HTJ2K" in r["codec"] else "tab:green" if "pipeline" in r["codec"] else "tab:grey"
               for r in rows]
    ax.barh(range(len(rows)), median, xerr=[low, high], color=colours)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("MB/s of raw pixels (median, bars: min-max over repeats; log scale)")
    ax.set_title("Lossless codec throughput on the same frames\n(blue: HTJ2K, green: the full transcode pipeline)")
    return _save(fig, path, machine)


def ratios(size: dict[str, Any], machine: dict[str, Any], path: Path) -> Path:
    sets = list(size)
    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4.5), squeeze=False)
    for ax, name in zip(axes[0], sets, strict=True):
        groups = size[name]["by_modality"]
        codecs = list(next(iter(groups.values()))["ratio"]) if groups else []
        width = 0.8 / max(len(codecs), 1)
        for i, codec in enumerate(codecs):
            values = [g["ratio"].get(codec, 0) for g in groups.values()]
            ax.bar(np.arange(len(groups)) + i * width, values, width, label=codec)
        ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, [f"{k} ({g['frames']})" for k, g in groups.items()])
        ax.set_ylabel("compression ratio (raw / compressed)")
        ax.set_xlabel("modality (frames)")
        ax.set_title(f"Lossless compression ratio by codec and modality: {name}")
        ax.legend(fontsize=7)
    return _save(fig, path, machine)


def levels(progressive: list[dict[str, Any]], machine: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p in progressive:
        xs = [1 / (1 << (p["levels"][-1]["level"] - lv["level"])) for lv in p["levels"]]
        ax.plot(xs, [lv["bytes"] / 1e3 for lv in p["levels"]], marker="o", label=f"{p['side']}x{p['side']}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("resolution (fraction of full width)")
    ax.set_ylabel("kB of codestream needed (prefix)")
    ax.set_title("Bytes a viewer must fetch for each resolution level (HTJ2K, 12-bit)")
    ax.legend(title="frame")
    return _save(fig, path, machine)


def scaling(result: dict[str, Any], machine: dict[str, Any], path: Path) -> Path:
    fig, (a, w, b, c) = plt.subplots(1, 4, figsize=(18, 4.2))
    t = result["threads"]
    a.plot([r["threads"] for r in t], [r["pipeline_mp_per_s"] for r in t], marker="o", label="pipeline")
    a.plot([r["threads"] for r in t], [r["bare_encode_mp_per_s"] for r in t], marker="o", label="bare HTJ2K encode")
    a.set_xlabel("threads")
    a.set_xticks([r["threads"] for r in t])
    a.set_ylabel("megapixels/s")
    a.set_title("One instance: throughput\nagainst threads over frames")
    a.legend()
    iw = result["ingest_workers"]
    w.plot([r["workers"] for r in iw], [r["files_per_s"] for r in iw], marker="o")
    w.set_xlabel("ingest worker processes (1 thread each)")
    w.set_xticks([r["workers"] for r in iw])
    w.set_ylabel("512x512 CT files/s (steady state)")
    w.set_title("Ingest: files per second\nagainst worker processes")
    w.set_ylim(bottom=0)
    s = result["frame_sizes"]
    for key, label in (("encode_mp_per_s", "encode"), ("decode_mp_per_s", "decode"), ("pipeline_mp_per_s", "pipeline")):
        b.plot([r["side"] for r in s], [r[key] for r in s], marker="o", label=label)
    b.set_xscale("log", base=2)
    b.set_xlabel("frame side (pixels, square)")
    b.set_ylabel("megapixels/s, one core")
    b.set_title("Throughput against frame size")
    b.legend()
    m = result["memory"]
    c.plot([r["instance_mb"] for r in m], [r["peak_rss_mb"] for r in m], marker="o")
    c.set_xlabel("instance size (MB of pixels)")
    c.set_ylabel("peak RSS (MB)")
    c.set_title("Peak RSS of one transcode\nagainst instance size")
    c.set_ylim(bottom=0)
    return _save(fig, path, machine)
