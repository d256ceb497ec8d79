"""The zarr view: values against pydicom's decode of the sources and
OpenJPH's decode of the stored level prefixes, slice order from positions,
OME-Zarr metadata checked by ome-zarr-models, bytes read at a reduced
level, and the same keys over HTTP through zarr-python's fsspec store."""

from __future__ import annotations

import random
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
import zarr
from pydicom.encaps import generate_frames

from fixtures.generate import write_ct_series
from tests.served import Served
from tests.test_server_live import serve
from transcode import zarr as view
from transcode.archive import FolderArchive
from transcode.bench.counting import CountingArchive
from transcode.codecs import codestream
from transcode.pipeline import ingest

SLICES = 6
ROWS, COLUMNS = 200, 300  # three decompositions: datasets 0..3


@pytest.fixture(scope="module")
def coronal(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], str, str]:
    """A coronal CT series whose file names and Instance Numbers are shuffled
    against its positions (which run along y, the orientation's normal)."""
    root = tmp_path_factory.mktemp("zarr")
    paths = write_ct_series(root / "src", SLICES, rows=ROWS, columns=COLUMNS)
    rng = random.Random(13)
    numbers, ys = rng.sample(range(1, SLICES + 1), SLICES), rng.sample(range(SLICES), SLICES)
    for path, number, y in zip(paths, numbers, ys, strict=True):
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        ds.ImagePositionPatient = [-150.0, -90.0 + 2.5 * y, 40.0]
        ds.InstanceNumber = number
        ds.save_as(path)
    with FolderArchive(root / "archive", exclusive=True) as archive:
        report = ingest([root / "src"], archive, workers=1)
    assert {e.outcome for e in report.entries} == {"transcoded"}
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    return root / "archive", paths, ds.StudyInstanceUID, ds.SeriesInstanceUID


def _patient_order(paths: list[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[1]))


def _stored_codestreams(archive_root: Path, sop_uids: list[str]) -> list[bytes]:
    """Each slice's stored codestream, read with pydicom (not the server's reader)."""
    out = []
    for sop in sop_uids:
        path = next(archive_root.rglob(f"{sop}.dcm"))
        ds = pydicom.dcmread(path)
        out.append(next(generate_frames(ds.PixelData, number_of_frames=1)))
    return out


def test_series_values_order_and_levels(coronal) -> None:
    root, paths, study, series = coronal
    ordered = _patient_order(paths)
    with FolderArchive(root, read_only=True) as archive:
        image = zarr.open(view.open_series(archive, study, series))
        assert isinstance(image, zarr.Group)
        full = image["0"][:]
        expected = np.stack([pydicom.dcmread(p).pixel_array for p in ordered])
        assert full.dtype == expected.dtype and np.array_equal(full, expected)
        sops = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in ordered]
        streams = _stored_codestreams(root, sops)
        bits = int(pydicom.dcmread(paths[0], stop_before_pixels=True).BitsStored)
        datasets = sorted(image.array_keys(), key=int)
        assert len(datasets) == codestream.parse(streams[0]).decompositions + 1 == 4
        for k in datasets[1:]:
            level = codestream.parse(streams[0]).decompositions - int(k)
            data = image[k][:]
            for z, stream in enumerate(streams):
                index = codestream.parse(stream)
                prefix = stream[:index.level_end(level)] + b"\xff\xd9"
                decoded = imagecodecs.htj2k_decode(prefix, skipres=index.decompositions - level)
                clamped = np.clip(decoded, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)
                assert data[z].shape == decoded.shape == index.resolution_size(level)[::-1]
                assert np.array_equal(data[z], clamped), (k, z)


def test_ome_metadata_is_valid(coronal) -> None:
    ome_models = pytest.importorskip("ome_zarr_models.v05.image")
    root, paths, study, series = coronal
    source = pydicom.dcmread(paths[0], stop_before_pixels=True)
    with FolderArchive(root, read_only=True) as archive:
        group = zarr.open_group(view.open_series(archive, study, series), mode="r")
        ome = ome_models.Image.from_zarr(group)  # validates against the OME-NGFF 0.5 models
        multiscale = ome.ome_attributes.multiscales[0]
        assert [a.name for a in multiscale.axes] == ["z", "y", "x"]
        for k, dataset in enumerate(multiscale.datasets):
            scale = dataset.coordinateTransformations[0].scale
            rows, columns = group[dataset.path].shape[1:]
            assert scale[0] == pytest.approx(2.5)  # the position step along the normal
            assert scale[1] == pytest.approx(float(source.PixelSpacing[0]) * ROWS / rows)
            assert scale[2] == pytest.approx(float(source.PixelSpacing[1]) * COLUMNS / columns)
            assert group[dataset.path].shape[0] == SLICES and (k == 0) == (rows == ROWS)


def test_reduced_level_reads_only_its_prefixes(coronal) -> None:
    root, paths, study, series = coronal
    sops = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths]
    streams = _stored_codestreams(root, sops)
    with CountingArchive(root, read_only=True) as archive:
        image = zarr.open_group(view.open_series(archive, study, series), mode="r")
        quarter = image["2"][:]
        prefixes = sum(codestream.parse(s).level_end(codestream.parse(s).decompositions - 2) for s in streams)
        assert quarter.shape == (SLICES, -(-ROWS // 4), -(-COLUMNS // 4))
        assert archive.read_bytes == prefixes
        stored = sum(p.stat().st_size for p in root.rglob("*.dcm"))
        assert archive.read_bytes < 0.25 * stored


def test_multiframe_and_colour_instances(served: Served) -> None:
    with FolderArchive(served.root, read_only=True) as archive:
        for modality in ("MR", "US"):  # 5-frame RLE MR (transcoded); 2-frame RGB US
            study, series, sop = served.find(modality)
            source = served.source(sop)
            image = zarr.open_group(view.open_instance(archive, study, series, sop), mode="r")
            frames = image["0"][:]
            if source.SamplesPerPixel > 1:  # (c, z, y, x)
                assert frames.shape == (3, source.NumberOfFrames, source.Rows, source.Columns)
                frames = np.moveaxis(frames, 0, -1)
            assert np.array_equal(frames, source.pixel_array), modality


def test_kept_instance_is_decoded_by_the_dicom_reader(served: Served) -> None:
    kept = [sop for sop in served.sources if served.source(sop).file_meta.TransferSyntaxUID.is_compressed
            and served.source(sop).Modality == "US"]
    study, series = served.study_a, served.source(kept[0]).SeriesInstanceUID
    with FolderArchive(served.root, read_only=True) as archive:
        image = zarr.open_group(view.open_instance(archive, study, series, kept[0]), mode="r")
        assert list(image.array_keys()) == ["0"]  # no resolution levels for a frame kept as is
        source = served.source(kept[0])
        raw = pydicom.pixels.pixel_array(source, raw=True)
        assert np.array_equal(np.moveaxis(image["0"][:], 0, -1)[0], raw)


def test_over_http_with_zarr_python(coronal) -> None:
    pytest.importorskip("aiohttp")
    root, _, study, series = coronal
    with FolderArchive(root, read_only=True) as archive:
        for url in serve(archive):
            base = url.removesuffix("/dicomweb") + f"/zarr/studies/{study}/series/{series}"
            remote = zarr.open_group(base, mode="r")
            local = zarr.open_group(view.open_series(archive, study, series), mode="r")
            assert remote.attrs.asdict() == local.attrs.asdict()
            for k in ("0", "3"):
                assert np.array_equal(remote[k][:], local[k][:])
            with pytest.raises(KeyError):
                remote["9"]
