"""Bounded work for any input: a small file must not take the memory.

A file of a few kB whose header declares a 30000x30000 frame took `convert`
to 6.3 GB and STOW workers to 5.4 GB; a codestream declaring more than its
header made the decoder allocate for it; rendering such a frame took the
server to 2.4 GB. Peak memory is measured in a fresh process against a
generous bound, far below what one such frame would need.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import HTJ2KLossless, JPEG2000Lossless, JPEGLSLossless, RLELossless

from fixtures.generate import Spec, write
from tests.conftest import ROOT
from tests.helpers import sha256
from transcode import Outcome, transcode_file
from transcode.codecs.htj2k import EncodeSettings
from transcode.policy import Reason

#: A fresh interpreter with numpy, pydicom, imagecodecs (and the server) loaded
#: stays near 100-150 MB; one 30000x30000 8-bit frame alone is 900 MB.
PEAK_BOUND_MB = 400
HUGE = 30000


def _relabelled(tmp: Path, name: str, transfer_syntax: str, *, header: int, codestream: int | None = None) -> Path:
    """A 64x64 8-bit instance whose header says `header` x `header` and, for
    JPEG-LS and JPEG 2000, whose codestream says `codestream` x `codestream`."""
    path = write(Spec("OT", 64, 64, 1, 8, 8, seed=5, transfer_syntax=transfer_syntax), tmp / f"{name}.dcm")
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = header
    ds.save_as(path)
    if codestream is not None:
        data = bytearray(path.read_bytes())
        if transfer_syntax == JPEGLSLossless:  # SOF55: length, precision, height, width
            struct.pack_into(">HH", data, data.index(b"\xff\xf7") + 5, codestream, codestream)
        else:  # SOC, SIZ: length, capabilities, width, height (image offsets 0)
            struct.pack_into(">II", data, data.index(b"\xff\x4f\xff\x51") + 8, codestream, codestream)
        path.write_bytes(data)
    return path


PEAK = """
def vm_hwm_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
"""


def _peak(code: str, *args: str) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON object, to which
    the peak resident memory (MB) of the process and of its reaped children
    is added. The process's own peak is /proc's VmHWM: `getrusage` keeps the
    peak from before `exec`, when the child was still a copy of this test
    process (pytest at 400 MB reads as a 400 MB child). Children (STOW
    workers) come from that small fresh interpreter, so `getrusage` is right
    for them."""
    if not Path("/proc/self/status").exists():
        pytest.skip("peak memory is read from /proc")
    wrapper = (
        "import json, resource, sys\n" + PEAK + code + "\n"
        "out['peak_mb'] = vm_hwm_mb()\n"
        "out['children_peak_mb'] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", wrapper, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


CONVERT = """
from transcode import transcode_file
r = transcode_file(sys.argv[1], sys.argv[2])
out = {"outcome": r.outcome.value, "reason": r.reason and r.reason.value, "detail": r.detail}
"""


@pytest.mark.parametrize(("transfer_syntax", "codestream"), [(RLELossless, None), (JPEGLSLossless, HUGE)],
                         ids=["rle-header", "jpegls-header-and-sof"])
def test_a_huge_declared_frame_is_kept_before_anything_is_decoded(tmp_path, transfer_syntax, codestream) -> None:
    src = _relabelled(tmp_path, "huge", transfer_syntax, header=HUGE, codestream=codestream)
    assert src.stat().st_size < 20_000
    out = _peak(CONVERT, str(src), str(tmp_path / "out.dcm"))
    assert (out["outcome"], out["reason"]) == ("kept", "frame_too_large"), out
    assert f"{HUGE}x{HUGE}" in out["detail"] and "900,000,000 bytes" in out["detail"]
    assert out["peak_mb"] < PEAK_BOUND_MB, out
    assert sha256(tmp_path / "out.dcm") == sha256(src)  # kept: archived unchanged


@pytest.mark.parametrize("transfer_syntax", [JPEGLSLossless, JPEG2000Lossless, HTJ2KLossless])
def test_a_codestream_larger_than_its_header_is_not_decoded(tmp_path, transfer_syntax) -> None:
    """Header 64x64, codestream 30000x30000: decoders allocate for the
    codestream's frame before pydicom compares sizes (seen: 1.8 GB for a
    real 30000x30000 JPEG-LS stream, 760 MB and 10 s for a 12000x12000
    JPEG 2000 one, in 64x64 headers)."""
    src = _relabelled(tmp_path, "liar", transfer_syntax, header=64, codestream=HUGE)
    out = _peak(CONVERT, str(src), str(tmp_path / "out.dcm"))
    assert (out["outcome"], out["reason"]) == ("kept", "decode_error"), out
    assert "declares 900,000,000 samples" in out["detail"]
    assert out["peak_mb"] < PEAK_BOUND_MB, out


def test_the_cap_is_a_setting_and_admits_real_frames(tmp_path) -> None:
    src = write(Spec("CT", 64, 64, 1, 16, 12, seed=1), tmp_path / "ct.dcm")  # 8192 bytes per frame
    small = transcode_file(src, tmp_path / "kept.dcm", settings=EncodeSettings(max_frame_bytes=8191))
    assert small.outcome is Outcome.KEPT and small.reason is Reason.FRAME_TOO_LARGE
    assert "8,192 bytes" in small.detail and "8,191" in small.detail
    assert transcode_file(src, tmp_path / "ok.dcm", settings=EncodeSettings(max_frame_bytes=8192)).outcome \
        is Outcome.TRANSCODED
    cap = EncodeSettings().max_frame_bytes
    for rows, columns, samples, width in ((4096, 5120, 1, 2), (2457, 1890, 1, 2), (8192, 8192, 1, 2),
                                          (6000, 7000, 3, 1)):
        assert rows * columns * samples * width <= cap  # mammography, DBT, large CR, photographs


def test_cli_takes_the_cap(tmp_path) -> None:
    from transcode.cli import main

    src = write(Spec("CT", 64, 64, 1, 16, 12, seed=1), tmp_path / "ct.dcm")
    assert main(["convert", str(src), str(tmp_path / "out.dcm"), "--max-frame-mb", "0.004"]) == 3  # some kept


STOW = """
from fastapi.testclient import TestClient
from transcode.archive import FolderArchive
from transcode.server import create_app
boundary = "b0und"
parts = [open(p, "rb").read() for p in sys.argv[2:]]
body = b"".join(f"--{boundary}\\r\\nContent-Type: application/dicom\\r\\n\\r\\n".encode() + p + b"\\r\\n"
                for p in parts) + f"--{boundary}--\\r\\n".encode()
headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
with FolderArchive(sys.argv[1]) as archive:
    with TestClient(create_app(archive, stow_workers=1)) as client:
        r = client.post("/dicomweb/studies", content=body, headers=headers)
        out = {"status": r.status_code, "stored": len(r.json().get("00081199", {}).get("Value", []))}
        again = client.post("/dicomweb/studies", content=body, headers=headers)
        out["again"] = again.status_code
        rows = {i["00080018"]["Value"][0]: i for i in client.get("/dicomweb/instances").json()}
        out["syntaxes"] = sorted(i["00083002"]["Value"][0] for i in rows.values())
        rendered = []
        for i in rows.values():
            url = (f"/dicomweb/studies/{i['0020000D']['Value'][0]}/series/{i['0020000E']['Value'][0]}"
                   f"/instances/{i['00080018']['Value'][0]}")
            for what in ("/rendered", "/thumbnail"):
                answer = client.get(url + what)
                rendered.append([answer.status_code, answer.json()["error"] if answer.status_code >= 400 else ""])
        out["rendered"] = sorted(rendered)
"""


def test_stow_of_a_huge_declared_frame_is_stored_as_is_beside_other_uploads(tmp_path) -> None:
    """The oversized instance is kept (archived unchanged) without being
    decoded, the other instance of the same request is transcoded, the next
    request goes through, and rendering the kept one is refused: nothing
    allocates for the declared frame, in the server or its STOW worker."""
    huge = _relabelled(tmp_path, "huge", RLELossless, header=HUGE)
    normal = write(Spec("CT", 64, 64, 1, 16, 12, seed=2), tmp_path / "normal.dcm")
    out = _peak(STOW, str(tmp_path / "archive"), str(huge), str(normal))
    assert (out["status"], out["stored"], out["again"]) == (200, 2, 200), out
    assert out["syntaxes"] == ["1.2.840.10008.1.2.4.202", RLELossless]
    assert out["rendered"] == [[200, ""], [200, ""], [400, "image_too_large"], [400, "image_too_large"]]
    assert out["peak_mb"] < PEAK_BOUND_MB and out["children_peak_mb"] < PEAK_BOUND_MB, out


def test_rendered_images_are_scaled_to_the_cap_and_decode_at_most_the_cap(served, monkeypatch) -> None:
    """The tiled 600x500 CR under a 10,000-pixel cap: the output fits the cap
    (aspect kept), from a level that fits it too; the kept 64x64 JPEG, which
    has no levels, is refused rather than decoded whole."""
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from transcode.archive import FolderArchive
    from transcode.server import create_app, render
    from transcode.server.frames import FrameReader

    decoded: list[tuple[int, ...]] = []
    real = FrameReader.pixels

    def noting(self, instance, number, level=None):
        frame = real(self, instance, number, level)
        decoded.append(frame.shape)
        return frame

    with FolderArchive(served.root) as archive:
        client = TestClient(create_app(archive, render_limits=render.RenderLimits(max_pixels=10_000)))
        study, series, sop = served.find("CR")
        base = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
        monkeypatch.setattr(FrameReader, "pixels", noting)
        for query in ("", "?viewport=8192,8192"):
            r = client.get(base + "/rendered" + query, headers={"Accept": "image/png"})
            assert r.status_code == 200, r.text
            width, height = Image.open(io.BytesIO(r.content)).size
            assert width * height <= 10_000 and abs(width / height - 500 / 600) < 0.02
        assert decoded and all(shape[0] * shape[1] <= 10_000 for shape in decoded)
        (jpeg,) = [s for s in served.sources if served.source(s).PhotometricInterpretation == "YBR_FULL_422"]
        ds = served.source(jpeg)
        r = client.get(f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{jpeg}"
                       "/rendered", params={"viewport": "10,10"})
        assert r.status_code == 200  # 64x64 = 4,096 pixels: under the cap
        tight = TestClient(create_app(archive, render_limits=render.RenderLimits(max_pixels=4_000)))
        r = tight.get(f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{jpeg}"
                      "/thumbnail")
        assert r.status_code == 400 and r.json()["error"] == "image_too_large"
