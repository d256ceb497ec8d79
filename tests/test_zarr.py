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
from tests.served import TILED, Served
from tests.test_server_live import serve
from transcode import zarr as view
from transcode.archive import FolderArchive
from transcode.bench.counting import CountingArchive
from transcode.codecs import codestream
from transcode.codecs.codestream import CodestreamIndex
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
                decoded = _level_decode(stream, level, bits, signed=True)
                assert data[z].shape == decoded.shape == index.resolution_size(level)[::-1]
                assert np.array_equal(data[z], decoded), (k, z)


def _level_decode(stream: bytes, level: int, bits: int, *, signed: bool) -> np.ndarray:
    """OpenJPH's decode of the stored prefix up to `level`, clamped into Bits
    Stored (an unsigned container wraps the small negative overshoots of a
    reduced level to its top: they are read back as negative first)."""
    index = codestream.parse(stream)
    prefix = stream[:index.level_end(level)] + b"\xff\xd9"
    decoded = imagecodecs.htj2k_decode(prefix, skipres=index.decompositions - level)
    wide, width = decoded.astype(np.int64), decoded.dtype.itemsize * 8
    if not signed:
        wide = np.where(wide >= 1 << (width - 1), wide - (1 << width), wide)
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return np.clip(wide, low, high).astype(decoded.dtype)


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


@pytest.mark.parametrize("fixture", ["coronal", "tiled"])
def test_over_http_with_zarr_python(request: pytest.FixtureRequest, fixture: str) -> None:
    pytest.importorskip("aiohttp")
    root, _, study, series = request.getfixturevalue(fixture)
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


TILED_ROWS, TILED_COLUMNS = 333, 421  # 128-pixel tiles: 3 x 4, edge tiles 77 rows and 37 columns


@pytest.fixture(scope="module")
def tiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], str, str]:
    """An axial CT series of 3 slices of odd size, ingested with 128-pixel tiles."""
    root = tmp_path_factory.mktemp("zarr-tiled")
    paths = write_ct_series(root / "src", 3, rows=TILED_ROWS, columns=TILED_COLUMNS)
    with FolderArchive(root / "archive", exclusive=True) as archive:
        report = ingest([root / "src"], archive, workers=1, settings=TILED)
    assert {e.outcome for e in report.entries} == {"transcoded"}
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    return root / "archive", paths, ds.StudyInstanceUID, ds.SeriesInstanceUID


def _check_levels(image: zarr.Group, sources: list[pydicom.Dataset], streams: list[bytes]) -> None:
    """Every dataset of `image` is chunked by tile and equals pydicom's decode
    of `sources` at full size and OpenJPH's level decode of `streams` below."""
    index = codestream.parse(streams[0])
    assert index.tiles > 1
    full = image["0"][:]
    assert np.array_equal(full, np.stack([s.pixel_array for s in sources]))
    assert sorted(image.array_keys(), key=int) == [str(k) for k in range(index.decompositions + 1)]
    for k in range(index.decompositions + 1):
        array = image[str(k)]
        assert array.chunks[-2:] == (index.tile_height >> k, index.tile_width >> k)
        if k == 0:
            continue
        level = index.decompositions - k
        bits, signed = int(sources[0].BitsStored), bool(sources[0].PixelRepresentation)
        expected = np.stack([_level_decode(s, level, bits, signed=signed) for s in streams])
        got = array[:]
        assert got.shape == expected.shape and np.array_equal(got, expected), k


def test_tiled_series_chunks_are_tiles(tiled) -> None:
    root, _, study, series = tiled
    with FolderArchive(root, read_only=True) as archive:
        store = view.open_series(archive, study, series)
        sops = [sl.sop for sl in store.volume.slices]
        sources = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in tiled[1]}
        _check_levels(zarr.open_group(store, mode="r"), [sources[s] for s in sops], _stored_codestreams(root, sops))


def test_tiled_instance_chunks_are_tiles(served: Served) -> None:
    study, series, sop = served.find("CR")  # 600 x 500, 128-pixel tiles: 5 x 4, edge tiles 88 rows and 116 columns
    with FolderArchive(served.root, read_only=True) as archive:
        image = zarr.open_group(view.open_instance(archive, study, series, sop), mode="r")
        _check_levels(image, [served.source(sop)], _stored_codestreams(served.root, [sop]))


@pytest.mark.parametrize(("k", "row", "column"), [(0, 1, 1), (0, 2, 3), (2, 1, 2)])
def test_a_tile_chunk_reads_only_its_tile_parts(tiled, k: int, row: int, column: int) -> None:
    root, _, study, series = tiled
    with CountingArchive(root, read_only=True) as archive:
        store = view.open_series(archive, study, series)
        index = CodestreamIndex.from_dict(archive.index.frames(store.volume.slices[0].sop)[0].codestream)
        level, tile = index.decompositions - k, row * index.tiles_x + column
        chunk = store.value(f"{k}/c/0/{row}/{column}")
        assert chunk is not None and len(chunk) == 2 * (index.tile_height >> k) * (index.tile_width >> k)
        share = index.header_length + sum(tp.length for tp in index.tile_parts if tp.tile == tile and tp.part <= level)
        assert archive.read_bytes == share
        assert share < index.header_length + index.level_end(level) / index.tiles * 3
        assert store.value(f"{k}/c/0/{index.tiles_y}/0") is None


def test_chunks_are_frames_where_tiles_are_not_whole_pixels() -> None:
    volume = view.Volume("v", (), "uint16", 1, ((300, 300), (150, 150), (75, 75), (38, 38)), (1.0, 1.0, 1.0),
                         tile=(100, 100))
    assert [volume.chunk_shape(k) for k in range(4)] == [(1, 100, 100), (1, 50, 50), (1, 25, 25), (1, 38, 38)]
    assert [volume.grid(k) for k in range(4)] == [(3, 3), (3, 3), (3, 3), (1, 1)]
