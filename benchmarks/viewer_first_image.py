"""Bytes and milliseconds to the first visible image of a 2457x1890
tomosynthesis frame in the built-in viewer, progressive against whole.

A generated DBT object (`fixtures/generate.py`'s, 2457x1890, 10 bits in 16)
is ingested and served by `transcode serve` on loopback; headless chromium
(the browser test's harness, tests/browser/) opens the viewer with the HTTP
cache off and shows the object's first frame in each loading mode:
`range` (a first 64 kB byte range, then the rest), `stream` (one request
decoded as it arrives) and `whole` (the whole frame, then decode). Measured
in the page: from opening the series to the first IMAGE_RENDERED with an
image, and the frame bytes received by then (Resource Timing). The modes
alternate within each repetition, so they share the machine's noise; the
table gives medians and the ratios to `whole`.

    python benchmarks/viewer_first_image.py [--frames 69] [--repeat 5]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
from pathlib import Path

import pydicom

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `tests` and `fixtures` beside the package

from tests import browser_harness as harness
from transcode.bench.measure import machine, save

MODES = ["range", "stream", "whole"]


def table(results: dict) -> str:
    whole = results["modes"]["whole"]
    title = (f"First visible image of a DBT frame ({results['rows']} rows x {results['columns']} columns), loopback, headless "
             f"chromium, median of {results['repeat']} ({results['date']}):")
    lines = [title, "",
             "| loading | ms | vs whole | frame bytes received | vs whole | first image shown (columns x rows) |", "|---|---|---|---|---|---|"]
    for mode in MODES:
        m = results["modes"][mode]
        lines.append(f"| {mode} | {m['ms']:.0f} | {m['ms'] / whole['ms']:.2f}x | {m['bytes']:,} | "
                     f"{m['bytes'] / whole['bytes']:.3f}x | {m['columns']}x{m['rows']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=69, help="frames of the DBT object (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if (why := harness.missing()) is not None:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        archive, (source,) = harness.dbt_archive(folder, args.frames)
        header = pydicom.dcmread(source, stop_before_pixels=True)
        with harness.serving(archive) as origin:
            (study,) = harness.qido(origin, "/studies")
            study_uid = study["0020000D"]["Value"][0]
            (series,) = harness.qido(origin, f"/studies/{study_uid}/series")
            runs = harness.browse(origin, folder / "out", "first-image",
                                  {"modes": MODES, "study": study_uid, "series": series["0020000E"]["Value"][0],
                                   "repeat": args.repeat}, timeout=1800)["runs"]
    results = {"machine": machine(), "date": datetime.date.today().isoformat(), "repeat": args.repeat,
               "rows": header.Rows, "columns": header.Columns, "runs": runs, "modes": {}}
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        results["modes"][mode] = {"ms": statistics.median(r["ms"] for r in mine),
                                  "bytes": int(statistics.median(r["bytes"] for r in mine)),
                                  "columns": mine[0]["columns"], "rows": mine[0]["rows"]}
    save(args.out, "viewer_first_image", results, table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
