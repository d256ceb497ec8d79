"""Rendered frames and thumbnails against a numpy reference."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.served import Served
from transcode.archive import FolderArchive
from transcode.codecs import codestream
from transcode.server import create_app


class CountingArchive(FolderArchive):
    """Records the byte ranges read, to see what rendering touches."""

    reads: list[tuple[str, int, int | None]]

    def read(self, relative: str, start: int = 0, end: int | None = None) -> bytes:
        self.reads.append((relative, start, end))
        return super().read(relative, start, end)

    def read_into(self, relative: str, start: int, view: memoryview) -> None:
        self.reads.append((relative, start, start + len(view)))
        super().read_into(relative, start, view)


@pytest.fixture(scope="module")
def archive(served: Served):
    with CountingArchive(served.root) as archive:
        archive.reads = []
        yield archive


@pytest.fixture(scope="module")
def client(archive):
    return TestClient(create_app(archive))


def url(study: str, series: str, sop: str) -> str:
    return f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"


def image(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, written out independently of the server."""
    out = np.empty(values.shape)
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    out[values <= low] = 0
    out[values > high] = 255
    middle = (values > low) & (values <= high)
    out[middle] = ((values[middle] - (center - 0.5)) / (width - 1) + 0.5) * 255
    return out


def test_rendered_ct_uses_rescale_and_the_data_set_window(client, served) -> None:
    study, series, sop = served.find("CT")
    source = served.source(sop)
    values = source.pixel_array * float(source.RescaleSlope) + float(source.RescaleIntercept)
    png = image(client.get(url(study, series, sop) + "/rendered", headers={"Accept": "image/png"}))
    reference = linear_window(values, float(source.WindowCenter), float(source.WindowWidth))
    assert png.shape == source.pixel_array.shape
    assert np.abs(png.astype(float) - reference).max() <= 1
    asked = image(client.get(url(study, series, sop) + "/frames/1/rendered?window=100,1000&accept=image/png"))
    assert np.abs(asked.astype(float) - linear_window(values, 100, 1000)).max() <= 1


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_a_window_of_width_1_is_a_threshold(client, served) -> None:
    """Width 1, the least allowed (and the fallback over a uniform frame), is
    the standard's threshold at center - 0.5; it was 0/0 there, NaN cast to
    a byte, with a RuntimeWarning."""
    study, series, sop = served.find("CT")
    source = served.source(sop)
    values = source.pixel_array * float(source.RescaleSlope) + float(source.RescaleIntercept)
    center = float(np.median(values)) + 0.5  # a value the frame holds sits on the threshold and goes to black
    png = image(client.get(url(study, series, sop) + f"/frames/1/rendered?window={center},1&accept=image/png"))
    reference = linear_window(values, center, 1)
    assert set(np.unique(reference)) == {0, 255}
    np.testing.assert_array_equal(png, reference)


def test_rendered_without_a_window_spans_the_frame(client, served) -> None:
    study, series, sop = served.find("MR")
    frame = served.source(sop).pixel_array[2].astype(float)
    png = image(client.get(url(study, series, sop) + "/frames/3/rendered", headers={"Accept": "image/png"}))
    reference = linear_window(frame, (frame.min() + frame.max() + 1) / 2, frame.max() - frame.min() + 1)
    assert np.abs(png.astype(float) - reference).max() <= 1


def test_rendered_colour_is_the_stored_rgb(client, served) -> None:
    study, series, sop = served.find("US")
    png = image(client.get(url(study, series, sop) + "/frames/2/rendered?accept=image/png"))
    np.testing.assert_array_equal(png, served.source(sop).pixel_array[1])


def test_jpeg_is_the_default(client, served) -> None:
    study, series, sop = served.find("CT")
    r = client.get(url(study, series, sop) + "/rendered", headers={"Accept": "*/*"})
    assert r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
    assert client.get(url(study, series, sop) + "/rendered", headers={"Accept": "image/gif"}).status_code == 406


def test_thumbnail_reads_and_decodes_only_the_levels_it_needs(client, served, archive) -> None:
    study, series, sop = served.find("CR")
    full = client.get(url(study, series, sop) + "/frames/1", headers={"Accept": "image/jphc"}).content
    index = codestream.parse(full)
    archive.reads.clear()
    thumb = image(client.get(url(study, series, sop) + "/thumbnail", headers={"Accept": "image/png"}))
    assert thumb.shape == (128, 107)  # 600 x 500 fitted into 128 x 128
    (_, start, end), = [r for r in archive.reads if r[0].endswith(f"{sop}.dcm")]
    assert index.resolution_size(2) == (125, 150)  # the smallest level not smaller than 107 x 128
    assert end - start == index.level_end(2) < index.length / 4
    # against the full frame, windowed and averaged down: close, not equal (different resampling)
    source = served.source(sop).pixel_array.astype(float)
    reference = linear_window(source, (source.min() + source.max() + 1) / 2, source.max() - source.min() + 1)
    small = np.asarray(Image.fromarray(reference.astype(np.uint8)).resize((107, 128), Image.Resampling.BOX))
    assert np.abs(thumb.astype(float) - small).mean() < 6


def test_series_and_study_thumbnails(client, served) -> None:
    study, series, _ = served.find("CT")
    assert image(client.get(f"/dicomweb/studies/{study}/series/{series}/thumbnail?accept=image/png")).shape == (96, 128)
    assert max(image(client.get(f"/dicomweb/studies/{study}/thumbnail?viewport=64,64&accept=image/png")).shape[:2]) == 64
    assert image(client.get(f"/dicomweb/studies/{study}/series/{series}/rendered?accept=image/png")).shape == (96, 128)


@pytest.mark.parametrize("query", ["window=1", "window=a,b", "window=40,0", "viewport=0,10", "viewport=1,2,3,4,-5,6",
                                   "viewport=1,2,3,4,5", "viewport=10,10,120,90,20,20",
                                   "quality=0"])
def test_bad_rendering_parameters(client, served, query) -> None:
    study, series, sop = served.find("CT")
    r = client.get(url(study, series, sop) + "/rendered?" + query)
    assert r.status_code == 400 and r.json()["detail"]


def test_voi_lut_sequence_is_applied(tmp_path) -> None:
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    from fixtures.generate import Spec, dataset
    from transcode.pipeline import ingest

    ds = dataset(Spec("CT", 40, 48, 1, 16, 12, seed=3), study=generate_uid(), series=generate_uid(), number=1)
    del ds.WindowCenter, ds.WindowWidth
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    lut = Dataset()
    first, entries = 100, 3000
    table = (np.sqrt(np.arange(entries) / (entries - 1)) * 4095).astype(np.uint16)  # a gamma curve, 12 bits
    lut.LUTDescriptor, lut.LUTData = [entries, first, 12], table.astype("<u2").tobytes()
    ds.VOILUTSequence = [lut]
    ds.save_as(tmp_path / "voi.dcm", enforce_file_format=True)
    with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
        assert ingest([tmp_path / "voi.dcm"], archive, workers=1).counts()["transcoded"] == 1
        client = TestClient(create_app(archive))
        png = image(client.get(url(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) + "/rendered",
                               headers={"Accept": "image/png"}))
    reference = table[np.clip(ds.pixel_array.astype(int) - first, 0, entries - 1)].astype(float) * 255 / 4095
    assert np.abs(png.astype(float) - reference).max() <= 1
