"""Peak memory of transcoding one frame, by frame size, and of a forged header.

Each case runs `transcode_file` (default settings: all cores, the default
cross-check, which in a fresh process decodes this first instance of its
format with OpenJPEG too) in a fresh interpreter and reports its peak
resident memory (VmHWM), against the interpreter with the
same imports and nothing transcoded. The frame size cap
(`EncodeSettings.max_frame_bytes`, `--max-frame-mb`) is chosen from these
figures: memory per frame in flight is a small multiple of the frame. The
last table is the memory `/rendered` adds per decoded pixel, which sets the
server's render cap (`RenderLimits`, `--max-render-pixels`).

    python benchmarks/bounds.py [--out results/]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pydicom  # noqa: E402
from pydicom.uid import RLELossless  # noqa: E402

from fixtures.generate import Spec, write  # noqa: E402
from transcode.bench.measure import machine, save  # noqa: E402

CASES = {
    "CT 512x512 16-bit": Spec("CT", 512, 512, 1, 16, 12, seed=1),
    "DBT frame 2457x1890 16-bit": Spec("MG", 2457, 1890, 1, 16, 10, seed=2),
    "mammogram 4096x5120 16-bit": Spec("MG", 5120, 4096, 1, 16, 12, seed=3),
    "8192x8192 16-bit (the default cap, 128 MiB)": Spec("CR", 8192, 8192, 1, 16, 12, seed=4),
}
# VmHWM, not getrusage: that keeps the peak from before exec (the parent's copy).
RUN = """
import json, sys
from transcode import transcode_file
result = transcode_file(sys.argv[1], sys.argv[2]) if len(sys.argv) > 1 else None
with open("/proc/self/status") as status:
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
print(json.dumps({"outcome": result and result.outcome.value, "reason": result and (result.reason or ""),
                  "peak_mb": peak}))
"""


#: The grey-scale rendering of one decoded frame (what /rendered does after decoding).
RENDER = """
import json, sys
import numpy as np
from pydicom.dataset import Dataset
from transcode.server import render
def hwm():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
rows, columns = int(sys.argv[1]), int(sys.argv[2])
ds = Dataset()
ds.PhotometricInterpretation, ds.RescaleSlope, ds.RescaleIntercept = "MONOCHROME2", 1, -1024
ds.WindowCenter, ds.WindowWidth = 40, 400
frame = (np.arange(rows * columns, dtype=np.uint32) % 4096).astype(np.uint16).reshape(rows, columns)
before = hwm()
render.encode_image(render.to_rgb_or_grey(frame, ds, None), (columns, rows), "image/jpeg")
print(json.dumps({"added_mb": hwm() - before}))
"""


def peak(*args: str, code: str = RUN) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def forged(tmp: Path) -> Path:
    """A 64x64 RLE instance whose header declares 30000x30000 (a few kB)."""
    path = write(Spec("OT", 64, 64, 1, 8, 8, seed=5, transfer_syntax=RLELossless), tmp / "forged.dcm")
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 30000
    ds.save_as(path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    baseline = peak()["peak_mb"]
    report: dict = {"machine": machine(), "baseline_mb": baseline, "cases": {}}
    rows = ["| case | frame | peak RSS | above the bare interpreter | / frame size | outcome |",
            "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in [*CASES.items(), ("forged header: 30000x30000 8-bit in a 6 kB file", None)]:
            src = write(spec, Path(tmp) / "src.dcm") if spec else forged(Path(tmp))
            frame_mb = (spec.rows * spec.columns * 2 if spec else 30000 * 30000) / 2**20
            out = peak(str(src), str(Path(tmp) / "out.dcm"))
            above = out["peak_mb"] - baseline
            report["cases"][name] = {**out, "frame_mb": frame_mb, "above_baseline_mb": above}
            rows.append(f"| {name} | {frame_mb:.1f} MiB | {out['peak_mb']:.0f} MB | {above:.0f} MB | "
                        f"{above / frame_mb:.1f}x | {out['outcome']} {out['reason']} |")
            src.unlink()
    rows.append(f"\nThe bare interpreter with the same imports: {baseline:.0f} MB.\n")
    rows += ["| rendering one grey-scale frame (after its decode) | pixels | memory added | per pixel |",
             "|---|---|---|---|"]
    for height, width in ((2048, 2048), (4096, 4096), (5120, 4096)):
        added = peak(str(height), str(width), code=RENDER)["added_mb"]
        report.setdefault("render", {})[f"{width}x{height}"] = added
        rows.append(f"| {width}x{height} | {width * height / 1e6:.1f} M | {added:.0f} MB | "
                    f"{added * 2**20 / (width * height):.0f} bytes |")
    save(args.out, "bounds", report, "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
