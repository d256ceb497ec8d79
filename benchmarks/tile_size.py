"""Tile size for large frames: bytes and codec time, untiled vs 512 vs 1024.

Measured on DBT-sized frames (2457x1890, 10 bits in 16) and a 4096x4096 CR
frame, with the .202 profile. Prints a Markdown table; the choice it backs is
documented in transcode/codecs/htj2k.py (EncodeSettings).

    python benchmarks/tile_size.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures.generate import phantom  # noqa: E402
from transcode.codecs import htj2k  # noqa: E402
from transcode.codecs.htj2k import EncodeSettings  # noqa: E402

FRAMES = {"DBT 2457x1890 10-bit": (2457, 1890, 10), "CR 4096x4096 12-bit": (4096, 4096, 12)}
CHOICES = {"untiled": EncodeSettings(tile_threshold=1 << 30), "512": EncodeSettings(tile_size=512),
           "1024": EncodeSettings(tile_size=1024)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("| frame | tiles | bytes | vs untiled | encode ms | decode ms | level-2 decode ms |")
    print("|---|---|---|---|---|---|---|")
    for name, (rows, cols, bits) in FRAMES.items():
        frame = phantom(rows, cols, bits=bits, signed=False, seed=11).astype("u2")
        untiled = None
        for label, settings in CHOICES.items():
            enc, dec, low = [], [], []
            for _ in range(args.repeats):
                t = time.perf_counter()
                data, index = htj2k.encode(frame, colour_transform=False, settings=settings)
                enc.append(time.perf_counter() - t)
                t = time.perf_counter()
                htj2k.decode(data)
                dec.append(time.perf_counter() - t)
                t = time.perf_counter()
                htj2k.decode(data[: index.level_end(2)], level=2, decompositions=index.decompositions)
                low.append(time.perf_counter() - t)
            untiled = untiled or len(data)
            print(f"| {name} | {label} ({index.tiles}) | {len(data):,} | {len(data) / untiled - 1:+.2%} | "
                  f"{statistics.median(enc) * 1e3:.1f} | {statistics.median(dec) * 1e3:.1f} | "
                  f"{statistics.median(low) * 1e3:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
