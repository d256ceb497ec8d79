"""The Orthanc hook in a real Orthanc (Debian's `orthanc` and
`orthanc-python`): instances uploaded over REST and sent with dcmtk's
storescu are stored as .202 with bit-exact pixels and every other element
as dcmtk reads it unchanged; a lossy one is stored as received."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import HTJ2KLosslessRPCL, generate_uid

from fixtures.generate import write_ct_series
from tests.dcmdump import data_set_view, dump, require_dcmdump
from tests.peers import PYTHON_PLUGIN, Orthanc, orthanc
from tests.test_byte_faithful import assert_same_elements
from transcode import Outcome
from transcode.codecs.htj2k import EncodeSettings
from transcode.dicom.read import open_instance
from transcode.orthanc import HookOptions, plugin_script, transcode_bytes
from transcode.verify import CrossCheck

#: pydicom's files in the syntaxes a modality sends: explicit and implicit VR
#: LE, big endian, deflate, RLE, JPEG Lossless, JPEG-LS and J2K lossless.
TRANSCODED = ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm",
              "MR_small_RLE.dcm", "SC_rgb_jpeg_gdcm.dcm", "MR_small_jpeg_ls_lossless.dcm",
              "MR_small_jp2klossless.dcm"]
#: JPEG Extended (.51), lossy: stored as received.
LOSSY = "JPEG-lossy.dcm"
#: storescu's option that proposes each file's own syntax (so Orthanc receives it as it is);
#: the uncompressed little endian ones need none.
PROPOSE = {"MR_small_bigendian.dcm": ["-xb"], "image_dfl.dcm": ["-xd"], "MR_small_RLE.dcm": ["-xr"],
           "SC_rgb_jpeg_gdcm.dcm": ["-xs"], "MR_small_jpeg_ls_lossless.dcm": ["-xt"],
           "MR_small_jp2klossless.dcm": ["-xv"], LOSSY: ["-xx"]}
#: Data Set Trailing Padding
PADDING = 0xFFFCFFFC


def _plugin_python() -> str | None:
    """The Python version the installed plugin embeds (it links libpythonX.Y)."""
    if not PYTHON_PLUGIN.exists():
        return None
    match = re.search(rb"libpython(3\.\d+)", PYTHON_PLUGIN.read_bytes())
    return match[1].decode() if match else None


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory):  # -> Orthanc
    """One Orthanc with the hook for the module, enabled as the README says."""
    embedded = _plugin_python()
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if embedded is not None and embedded != here:
        pytest.skip(f"Orthanc's Python plugin embeds Python {embedded}; these tests run on {here}")
    folder = tmp_path_factory.mktemp("orthanc-hook")
    script = folder / "transcode_hook.py"
    script.write_text(plugin_script())
    with orthanc(folder / "orthanc", python_script=script) as peer:
        yield peer


def _relabelled(names: list[str], folder: Path) -> dict[str, Path]:
    """Copies of pydicom's files with SOP Instance UIDs of their own (the MR
    variants share one, and Orthanc keeps the first instance of a UID)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in names:
        ds = pydicom.dcmread(get_testdata_file(name))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        files[name] = folder / name
        ds.save_as(files[name])
    return files


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    """The files sent: pydicom's, and a generated CT with a clinical header."""
    files = _relabelled([*TRANSCODED, LOSSY], tmp_path / "sources")
    ct = write_ct_series(tmp_path / "ct", 2, rows=96, columns=80)
    files.update({f"generated-{path.name}": path for path in ct})
    return files


def _source_pixels(src: Path) -> np.ndarray:
    """The source's pixels through pydicom, or, where pydicom has no decoder
    here (JPEG Lossless: its plugins are GPL), through the pipeline's reader
    (libjpeg-turbo, which the transcoder cross-checks with liblj92)."""
    try:
        return pydicom.dcmread(src).pixel_array
    except RuntimeError:
        with open_instance(src) as instance:
            frames = [np.array(frame) for frame in instance.frames()]
        return frames[0] if len(frames) == 1 else np.stack(frames)


def _stored(peer: Orthanc, sop_uid: str, folder: Path) -> Path:
    """The file Orthanc stored for the instance `sop_uid`, saved under `folder`."""
    found = peer.post("/tools/lookup", sop_uid.encode(), content_type="text/plain")
    (instance,) = [item["ID"] for item in found if item["Type"] == "Instance"]
    with urllib.request.urlopen(f"{peer.url}/instances/{instance}/file", timeout=30) as response:
        path = folder / f"{sop_uid}.dcm"
        path.write_bytes(response.read())
    return path


def _assert_transcoded(src: Path, stored: Path) -> None:
    out = pydicom.dcmread(stored)
    assert out.file_meta.TransferSyntaxUID == HTJ2KLosslessRPCL
    # OpenJPEG (pylibjpeg-openjpeg) decodes Orthanc's stored file to the source's pixels
    np.testing.assert_array_equal(out.pixel_array, _source_pixels(src))
    assert_same_elements(src, stored)


def _sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_rest_uploads_are_stored_as_202_and_lossy_as_received(hooked: Orthanc, sources: dict[str, Path],
                                                               tmp_path: Path) -> None:
    require_dcmdump()
    for name, src in sources.items():
        answer = hooked.post("/instances", src.read_bytes())
        assert answer["Status"] == "Success", name
    for name, src in sources.items():
        stored = _stored(hooked, _sop_uid(src), tmp_path)
        if name == LOSSY:
            assert stored.read_bytes() == src.read_bytes()  # byte for byte as received
        else:
            _assert_transcoded(src, stored)
    log = hooked.log.read_text(errors="replace")
    assert "kept lossy_source" in log  # the reason is in Orthanc's log


def test_c_store_instances_are_stored_as_202_and_lossy_as_received(hooked: Orthanc, sources: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    require_dcmdump()
    # dcmtk's, beside dcmdump (pynetdicom puts a `storescu` of its own in the environment)
    storescu = Path(require_dcmdump()).with_name("storescu")
    if not storescu.exists():
        pytest.skip("dcmtk's storescu is not installed (Debian package dcmtk)")
    for name, src in sources.items():
        ds = pydicom.dcmread(src)
        if PADDING in ds:  # dcmtk's DIMSE drops it in transit (storescu to storescp too)
            del ds[PADDING]
            ds.save_as(src)
    sent = list(sources.values())
    lossy = sources[LOSSY]
    for name, src in sources.items():  # one association each, proposing the file's own syntax
        command = [str(storescu), *PROPOSE.get(name, []), "-aec", hooked.aet, "127.0.0.1",
                   str(hooked.dicom_port), str(src)]
        run = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert run.returncode == 0, f"{name}: {run.stderr}"
    for src in sent:
        stored = _stored(hooked, _sop_uid(src), tmp_path)
        if src == lossy:  # as received: Orthanc writes its own File Meta around the data set it
            # received, which dcmtk's DIMSE re-encoded (sequences of explicit length)
            before, after = pydicom.dcmread(src), pydicom.dcmread(stored)
            assert after.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID
            assert after.PixelData == before.PixelData
            assert data_set_view(dump(stored)) == data_set_view(dump(src))
        else:
            _assert_transcoded(src, stored)


def test_concurrent_uploads_are_each_transcoded(hooked: Orthanc, tmp_path: Path) -> None:
    """Orthanc calls the hook from several HTTP threads at once."""
    series = write_ct_series(tmp_path / "ct", 12, rows=128, columns=96)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda path: hooked.post("/instances", path.read_bytes()), series))
    assert all(answer["Status"] == "Success" for answer in answers)
    for src in series:
        stored = _stored(hooked, _sop_uid(src), tmp_path)
        out = pydicom.dcmread(stored)
        assert out.file_meta.TransferSyntaxUID == HTJ2KLosslessRPCL
        np.testing.assert_array_equal(out.pixel_array, pydicom.dcmread(src).pixel_array)


def test_options_come_from_orthanc_json() -> None:
    options = HookOptions.from_config({"Transcode": {"Threads": 2, "CrossCheck": "all", "MaxFrameMB": 1}})
    assert options.threads == 2 and options.crosscheck is CrossCheck.ALL
    assert options.settings.max_frame_bytes == 1 << 20
    assert HookOptions.from_config({}) == HookOptions()
    with pytest.raises(ValueError, match="Thread"):
        HookOptions.from_config({"Transcode": {"Thread": 2}})


def test_what_is_not_transcoded_is_returned_as_none(tmp_path: Path) -> None:
    """Kept and failed instances give no bytes (the hook answers KEEP_AS_IS),
    and the staging folder is left empty."""
    options = HookOptions(temporary_directory=str(tmp_path))
    output, result = transcode_bytes(Path(get_testdata_file(LOSSY)).read_bytes(), options)
    assert output is None and result.outcome is Outcome.KEPT and result.reason.value == "lossy_source"
    output, result = transcode_bytes(b"not DICOM at all", options)
    assert output is None and result.outcome is Outcome.FAILED
    capped = HookOptions(temporary_directory=str(tmp_path), settings=EncodeSettings(max_frame_bytes=1000))
    output, result = transcode_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes(), capped)
    assert output is None and result.reason.value == "frame_too_large"
    output, result = transcode_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes(), options)
    assert result.outcome is Outcome.TRANSCODED
    assert pydicom.dcmread(io.BytesIO(output)).file_meta.TransferSyntaxUID == HTJ2KLosslessRPCL
    assert list(tmp_path.iterdir()) == []
