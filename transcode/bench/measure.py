"""Timing and memory primitives shared by the benchmark parts."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def repeat(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls (one warm-up call first, not counted)."""
    fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return times


def on_threads(fn: Callable[[Any], Any], items: Sequence[Any], threads: int) -> Callable[[], None]:
    """A pass that runs `fn` over `threads` copies of `items` on `threads`
    threads: the all-cores throughput of a codec that releases the GIL."""
    def run() -> None:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(fn, list(items) * threads))
    return run


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants (Linux /proc)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (OSError, StopIteration):
            continue
    return total


def peak_rss(cmd: Sequence[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (all processes, sampled every 10 ms) of a command."""
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.01)
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-500:] if proc.stderr else ''}")
    return seconds, peak


def ingest_run(src: Path, archive: Path, workers: int, crosscheck: str) -> tuple[float, int]:
    """Wall seconds and peak RSS (all processes) of one `transcode ingest`
    with `workers` processes of one thread each."""
    return peak_rss([sys.executable, "-m", "transcode.cli", "ingest", str(src), "--archive", str(archive),
                     "--workers", str(workers), "--threads", "1", "--crosscheck", crosscheck])


def steady_seconds(archive: Path, files: int) -> float:
    """Seconds per file between the first and the last file committed, from
    the ledger: throughput without interpreter start-up and worker spawn."""
    with sqlite3.connect(archive / "index.sqlite") as db:
        first, last, count = db.execute("SELECT MIN(at), MAX(at), COUNT(*) FROM ledger").fetchone()
    assert count == files, (count, files)
    return (last - first) / (count - 1)


def timed_ingest(options: Sequence[str], index: Path, files: int) -> tuple[float, float, float]:
    """One `transcode ingest OPTIONS --threads 1` of `files` files: wall
    seconds of the command, seconds of the run itself (from its report:
    without what the command does before and after, such as starting and
    stopping a Dask cluster) and steady seconds per file (`steady_seconds`
    of `index`, the folder holding the index)."""
    report = index.with_suffix(".json")
    wall, _ = peak_rss([sys.executable, "-m", "transcode.cli", "ingest", *options, "--threads", "1",
                        "--report", str(report)])
    return wall, json.loads(report.read_text())["seconds"], steady_seconds(index, files)


def worker_seconds(archive: Path) -> float:
    """Seconds the workers spent on the files, from the ledger: the time of
    a lone file (a tomosynthesis object) without start-up and spawn."""
    with sqlite3.connect(archive / "index.sqlite") as db:
        (seconds,) = db.execute("SELECT SUM(seconds) FROM ledger").fetchone()
    return seconds


def save(out: Path, name: str, results: Any, table: str) -> None:
    """A benchmark script's figures as `name`.json and its table as
    `name`.md under `out`; the table is printed too."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2))
    (out / f"{name}.md").write_text(table.rstrip("\n") + "\n")
    print(table.rstrip("\n"))


def machine() -> dict[str, Any]:
    """CPU, cores and library versions, for results.json."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    libraries = {}
    for name in ("transcode", "numpy", "pydicom", "imagecodecs", "pylibjpeg-openjpeg", "pylibjpeg-rle", "blake3",
                 "fastapi", "uvicorn", "matplotlib"):
        try:
            libraries[name] = version(name)
        except PackageNotFoundError:
            libraries[name] = None
    import imagecodecs

    codecs = dict(item.split("-", 1) for item in imagecodecs.version().split(", ")[1:] if "-" in item)
    for name in ("openjph", "openjpeg", "charls", "zlib", "zstd", "libjpeg_turbo"):
        libraries[name] = codecs.get(name)
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "libraries": libraries}
