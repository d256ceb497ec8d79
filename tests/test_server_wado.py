"""WADO-RS: frames as stored or decoded, byte ranges, resolution levels,
instances, metadata, caching, errors."""

from __future__ import annotations

import io
import json

import imagecodecs
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.encaps import generate_frames
from pydicom.uid import DeflatedExplicitVRLittleEndian

from fixtures.generate import Spec, frame_arrays, write
from tests.served import Served, multipart_parts
from transcode.archive import FolderArchive
from transcode.catalog.base import InstanceRow
from transcode.codecs import codestream, htj2k
from transcode.codecs.htj2k import EncodeSettings
from transcode.codecs.uncompressed_plugin import ENCAPSULATED_UNCOMPRESSED
from transcode.pipeline import ingest
from transcode.server import convert, create_app

HTJ2K = "1.2.840.10008.1.2.4.202"
OHIF = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
CORNERSTONE = "multipart/related; type=application/octet-stream; transfer-syntax=*"
LE = "1.2.840.10008.1.2.1"
UNCOMPRESSED = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'


@pytest.fixture(scope="module")
def client(served: Served):
    with FolderArchive(served.root) as archive:
        yield TestClient(create_app(archive, cors_origins=["http://viewer.example"]))


def url(study: str, series: str, sop: str) -> str:
    return f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"


def source_frames(served: Served, sop: str) -> np.ndarray:
    """(frames, rows, columns[, samples]) as pydicom decodes the source."""
    ds = served.source(sop)
    arr = ds.pixel_array
    return arr.reshape((int(ds.get("NumberOfFrames", 1)),) + arr.shape[-3 + (ds.SamplesPerPixel == 1):])


@pytest.mark.parametrize("accept", [OHIF, CORNERSTONE, 'multipart/related; type="image/jphc"',
                                    f"multipart/related; type=application/octet-stream; transfer-syntax={HTJ2K}",
                                    f"image/jpeg;q=0.2, {OHIF};q=0.9, */*;q=0.1"])
def test_frames_as_stored_are_the_codestreams_and_decode_exactly(client, served, accept) -> None:
    study, series, sop = served.find("MR")
    r = client.get(url(study, series, sop) + "/frames/1,3,5", headers={"Accept": accept})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("multipart/related; type=")
    parts = multipart_parts(r.headers["content-type"], r.content)
    expected = source_frames(served, sop)
    media = "image/jphc" if "jphc" in accept else "application/octet-stream"
    for (headers, payload), number in zip(parts, (1, 3, 5), strict=True):
        assert headers["Content-Type"] == f"{media}; transfer-syntax={HTJ2K}"
        assert headers["Content-Location"].endswith(f"{url(study, series, sop)}/frames/{number}")
        np.testing.assert_array_equal(imagecodecs.htj2k_decode(payload), expected[number - 1])
        np.testing.assert_array_equal(imagecodecs.jpeg2k_decode(payload), expected[number - 1])  # OpenJPEG


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.203"])
def test_frames_asked_for_as_htj2k_lossless_or_htj2k_are_the_stored_bytes(client, served, syntax) -> None:
    """A client that names HTJ2K Lossless (.201) or HTJ2K (.203) was refused
    406, though every RPCL codestream is one of those too."""
    u = url(*served.find("MR")) + "/frames/2"
    stored = client.get(u, headers={"Accept": OHIF})
    named = client.get(u, headers={"Accept": f"multipart/related; type=application/octet-stream; transfer-syntax={syntax}"})
    assert named.status_code == 200, named.text
    (headers, payload), = multipart_parts(named.headers["content-type"], named.content)
    assert headers["Content-Type"] == f"application/octet-stream; transfer-syntax={syntax}"
    assert payload == multipart_parts(stored.headers["content-type"], stored.content)[0][1]


@pytest.mark.parametrize("accept", [UNCOMPRESSED, "*/*", None, 'multipart/related; type="application/octet-stream"'])
def test_frames_decoded_for_clients_that_take_only_uncompressed(client, served, accept) -> None:
    for modality in ("CT", "US"):
        study, series, sop = served.find(modality)
        headers = {"Accept": accept} if accept else {}
        r = client.get(url(study, series, sop) + "/frames/1", headers=headers)
        assert r.status_code == 200, r.text
        (part_headers, payload), = multipart_parts(r.headers["content-type"], r.content)
        assert part_headers["Content-Type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
        expected = source_frames(served, sop)[0]
        assert payload == expected.astype(expected.dtype.newbyteorder("<")).tobytes()


def test_single_part_body_when_asked_for_one_frame(client, served) -> None:
    study, series, sop = served.find("CT")
    r = client.get(url(study, series, sop) + "/frames/1", headers={"Accept": "image/jphc"})
    assert r.status_code == 200
    assert r.headers["content-type"] == f"image/jphc; transfer-syntax={HTJ2K}"
    np.testing.assert_array_equal(imagecodecs.htj2k_decode(r.content), source_frames(served, sop)[0])


def test_kept_instance_frames_are_the_stored_jpeg_or_decoded(client, served) -> None:
    study, series, _ = served.find("US")
    sop = next(s for s, p in served.sources.items() if p.name == "2.dcm" and p.parent.name == "us")
    ds = served.source(sop)
    stored = next(generate_frames(ds.PixelData, number_of_frames=1))
    r = client.get(url(study, series, sop) + "/frames/1", headers={"Accept": 'multipart/related; type="image/jpeg"'})
    (headers, payload), = multipart_parts(r.headers["content-type"], r.content)
    assert headers["Content-Type"] == "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"
    assert payload == stored
    r = client.get(url(study, series, sop) + "/frames/1", headers={"Accept": UNCOMPRESSED})
    (_, payload), = multipart_parts(r.headers["content-type"], r.content)
    assert len(payload) == 64 * 64 * 3
    r = client.get(url(study, series, sop) + "/frames/1", headers={"Accept": "multipart/related; type=image/jphc"})
    assert r.status_code == 406 and "image/jpeg" in r.json()["detail"]


def test_not_acceptable_says_what_is(client, served) -> None:
    study, series, sop = served.find("CT")
    r = client.get(url(study, series, sop) + "/frames/1", headers={"Accept": 'multipart/related; type="image/jls"'})
    assert r.status_code == 406
    assert r.json()["error"] == "not_acceptable" and "image/jphc" in r.json()["detail"]


def test_byte_ranges_are_pieces_of_one_body(client, served) -> None:
    study, series, sop = served.find("CR")
    u = url(study, series, sop) + "/frames/1"
    full = client.get(u, headers={"Accept": CORNERSTONE})
    assert full.headers["accept-ranges"] == "bytes"
    size = len(full.content)
    first = client.get(u, headers={"Accept": CORNERSTONE, "Range": "bytes=0-4095"})
    assert first.status_code == 206 and first.headers["content-range"] == f"bytes 0-4095/{size}"
    rest = client.get(u, headers={"Accept": CORNERSTONE, "Range": "bytes=4096-"})
    assert rest.headers["content-range"] == f"bytes 4096-{size - 1}/{size}"
    assert first.content + rest.content == full.content
    assert first.headers["etag"] == full.headers["etag"]
    tail = client.get(u, headers={"Accept": CORNERSTONE, "Range": "bytes=-10"})
    assert tail.content == full.content[-10:]
    past = client.get(u, headers={"Accept": CORNERSTONE, "Range": f"bytes={size}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"


@pytest.mark.parametrize("modality", ["CR", "CT"])  # tiled (20 tiles) and untiled
def test_every_level_prefix_decodes_to_that_level_of_the_full_frame(client, served, modality) -> None:
    study, series, sop = served.find(modality)
    u = url(study, series, sop) + "/frames/1"
    full = client.get(u, headers={"Accept": "image/jphc"}).content
    index = codestream.parse(full)
    assert (index.tiles > 1) == (modality == "CR")
    bits = int(served.source(sop).BitsStored)
    for level in range(index.resolutions):
        prefix = client.get(f"{u}?level={level}", headers={"Accept": "image/jphc"}).content
        expected = htj2k.decode(full, level=level, decompositions=index.decompositions)
        if level < index.decompositions:
            assert prefix == full[:index.level_end(level)] + b"\xff\xd9"  # the prefix, closed by EOC
        else:
            assert prefix == full
        np.testing.assert_array_equal(htj2k.decode(prefix, level=level, decompositions=index.decompositions),
                                      expected)
        # OpenJPEG (no reduced decode in its Python bindings) decodes the prefix at full size with the
        # missing detail bands zero: with the 5/3 wavelet its samples at multiples of 2^(levels
        # above) are exactly the level's image, except where that image overshoots the stored range
        # (ringing near 0), which OpenJPEG clamps and OpenJPH wraps in the container.
        step = 1 << (index.decompositions - level)
        seen = imagecodecs.jpeg2k_decode(prefix)[::step, ::step]
        # negative overshoots of unsigned frames: wrapped to the top of the container by OpenJPH, 0 by OpenJPEG
        wrapped = expected > np.iinfo(expected.dtype).max // 2 if expected.dtype.kind == "u" and bits < 16 \
            else np.zeros(expected.shape, bool)
        np.testing.assert_array_equal(seen[~wrapped], expected[~wrapped])
        assert np.all(seen[wrapped] == 0)


def test_level_errors(client, served) -> None:
    study, series, sop = served.find("CT")
    u = url(study, series, sop) + "/frames/1"
    assert client.get(f"{u}?level=9", headers={"Accept": "image/jphc"}).status_code == 400
    assert client.get(f"{u}?level=x", headers={"Accept": "image/jphc"}).status_code == 400
    assert client.get(f"{u}?level=0", headers={"Accept": UNCOMPRESSED}).json()["error"] == "no_levels"


def test_instance_retrieval_is_the_stored_object(client, served) -> None:
    study, series, sop = served.find("MR")
    stored = served.root / "objects" / study / series / f"{sop}.dcm"
    r = client.get(url(study, series, sop))
    (headers, payload), = multipart_parts(r.headers["content-type"], r.content)
    assert headers["Content-Type"] == f"application/dicom; transfer-syntax={HTJ2K}"
    assert payload == stored.read_bytes()
    single = client.get(url(study, series, sop), headers={"Accept": "application/dicom"})
    assert single.headers["content-type"] == "application/dicom" and single.content == stored.read_bytes()
    whole = client.get(f"/dicomweb/studies/{study}")
    parts = multipart_parts(whole.headers["content-type"], whole.content)
    assert len(parts) == 6
    assert all(pydicom.dcmread(__import__("io").BytesIO(p)).StudyInstanceUID == study for _, p in parts)


@pytest.mark.parametrize("study_of", ["study_a", "study_b"])
def test_instances_converted_to_explicit_little_endian_when_asked(client, served, study_of) -> None:
    """Every instance, transcoded or kept (the lossy JPEG), comes back as a
    native Explicit VR Little Endian object: the source's pixels (as pydicom
    decodes them, colour as RGB) and the source's elements."""
    study = getattr(served, study_of)
    r = client.get(f"/dicomweb/studies/{study}",
                   headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={LE}'})
    assert r.status_code == 200
    parts = multipart_parts(r.headers["content-type"], r.content)
    assert len(parts) == (6 if study_of == "study_a" else 1)
    for headers, payload in parts:
        assert headers["Content-Type"] == f"application/dicom; transfer-syntax={LE}"
        ds = pydicom.dcmread(io.BytesIO(payload))
        source = served.source(ds.SOPInstanceUID)
        assert ds.file_meta.TransferSyntaxUID == LE and not ds.file_meta.TransferSyntaxUID.is_compressed
        np.testing.assert_array_equal(ds.pixel_array, source.pixel_array)
        assert "ExtendedOffsetTable" not in ds
        changed = {"PixelData", "ExtendedOffsetTable", "ExtendedOffsetTableLengths"}  # native: no offset tables
        if source.PhotometricInterpretation.startswith("YBR"):
            changed.add("PhotometricInterpretation")  # decoded to RGB
            assert ds.PhotometricInterpretation == "RGB"
        for element in source:
            if element.keyword not in changed:
                assert ds[element.tag] == element, element
        assert {e.tag for e in ds} - {e.tag for e in source} == set()
    single = client.get(url(*served.find("CR")), headers={"Accept": f"application/dicom; transfer-syntax={LE}"})
    assert single.headers["content-type"] == "application/dicom"
    assert pydicom.dcmread(io.BytesIO(single.content)).file_meta.TransferSyntaxUID == LE


def test_which_kept_instances_convert() -> None:
    def row(outcome: str, syntax: str) -> InstanceRow:
        return InstanceRow("1.2", "1.2", "1.2", "x.dcm", syntax, outcome, None, 1, "d", None, 1, "{}")

    assert convert.possible(row("transcoded", HTJ2K))
    assert convert.possible(row("kept", "1.2.840.10008.1.2.4.50"))  # JPEG baseline: decompressed
    assert convert.possible(row("kept", "1.2.840.10008.1.2"))  # implicit VR: re-encoded
    assert not convert.possible(row("kept", "1.2.840.10008.1.2.4.100"))  # MPEG-2 video
    assert not convert.possible(row("kept", "1.2.840.10008.1.2.2"))  # big endian
    assert not convert.possible(row("kept", "1.2.3.4.5"))  # unknown


def test_metadata_has_absolute_bulk_data_uris(client, served) -> None:
    study, series, sop = served.find("CT")
    r = client.get(url(study, series, sop) + "/metadata")
    assert r.headers["content-type"] == "application/dicom+json"
    (meta,) = r.json()
    source = served.source(sop)
    assert meta["00280010"]["Value"] == [source.Rows]
    assert meta["00100010"]["Value"] == [{"Alphabetic": "Demo^Patient"}]
    assert meta["00083002"]["Value"] == [HTJ2K]
    pixel_uri = meta["7FE00010"]["BulkDataURI"]
    assert pixel_uri.startswith("http://testserver/dicomweb/studies/")
    bulk = client.get(pixel_uri.removeprefix("http://testserver"), headers={"Accept": OHIF})
    (_, payload), = multipart_parts(bulk.headers["content-type"], bulk.content)
    np.testing.assert_array_equal(imagecodecs.htj2k_decode(payload), source.pixel_array)
    series_meta = client.get(f"/dicomweb/studies/{study}/series/{series}/metadata").json()
    assert [m["00200013"]["Value"][0] for m in series_meta] == [1, 2, 3]
    assert len(client.get(f"/dicomweb/studies/{study}/metadata").json()) == 6


def test_bulk_data_of_any_element(client, served) -> None:
    study, series, sop = served.find("CT")
    meta = client.get(url(study, series, sop) + "/metadata").json()[0]
    uris = [v["BulkDataURI"] for v in meta.values() if "BulkDataURI" in v and not v["BulkDataURI"].endswith("7FE00010")]
    assert not uris  # nothing over 1 KiB in these fixtures but Pixel Data
    r = client.get(url(study, series, sop) + "/bulkdata/00100010")  # any element can be asked for
    (_, payload), = multipart_parts(r.headers["content-type"], r.content)
    assert payload.rstrip(b" ") == b"Demo^Patient"
    assert client.get(url(study, series, sop) + "/bulkdata/00991234").status_code == 404


def test_caching_headers_and_conditional_requests(client, served) -> None:
    study, series, sop = served.find("CT")
    u = url(study, series, sop) + "/frames/1"
    r = client.get(u, headers={"Accept": OHIF})
    assert r.headers["cache-control"] == "private, max-age=31536000, immutable"
    again = client.get(u, headers={"Accept": OHIF, "If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    other = client.get(u, headers={"Accept": UNCOMPRESSED})
    assert other.headers["etag"] != r.headers["etag"]  # a different representation
    study_level = client.get(f"/dicomweb/studies/{study}/metadata")
    assert study_level.headers["cache-control"] == "private, no-cache"


def test_cors_exposes_what_progressive_loaders_read(client, served) -> None:
    study, series, sop = served.find("CT")
    r = client.get(url(study, series, sop) + "/frames/1",
                   headers={"Accept": OHIF, "Origin": "http://viewer.example", "Range": "bytes=0-99"})
    assert r.headers["access-control-allow-origin"] == "http://viewer.example"
    exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
    assert {"content-range", "content-length", "content-type"} <= exposed
    preflight = client.options("/dicomweb/studies", headers={"Origin": "http://viewer.example",
                                                             "Access-Control-Request-Method": "GET",
                                                             "Access-Control-Request-Headers": "range"})
    assert preflight.status_code == 200


@pytest.mark.parametrize(("path", "status", "reason"), [
    ("/studies/1.2.3", 404, "not_found"),
    ("/studies/1.2.x/metadata", 400, "invalid_uid"),
    ("/studies/1.2.3/series/4.5/instances/..%2F..%2Findex.sqlite", 404, "not_found"),
    ("/studies/%2E%2E/series/%2E%2E/instances/index.sqlite", 400, "invalid_uid"),
    ("/studies/{a}/series/{s}/instances/{i}/frames/0", 400, "bad_frame_list"),
    ("/studies/{a}/series/{s}/instances/{i}/frames/99", 404, "no_such_frame"),
    ("/studies/{a}/series/{s}/instances/{i}/frames/1,x", 400, "bad_frame_list"),
    ("/studies/{a}/series/{s}/instances/{i}/frames/1_0", 400, "bad_frame_list"),
])
def test_errors_are_json_with_a_reason(client, served, path, status, reason) -> None:
    a, s, i = served.find("CT")
    r = client.get("/dicomweb" + path.format(a=a, s=s, i=i), headers={"Accept": OHIF})
    assert r.status_code == status, r.text
    assert r.json()["error"] == reason and r.json()["detail"]


def test_metadata_json_is_valid_for_pydicom(client, served) -> None:
    study, series, sop = served.find("US")
    meta = client.get(url(study, series, sop) + "/metadata").json()[0]
    ds = pydicom.Dataset.from_json(json.dumps({k: v for k, v in meta.items() if k != "7FE00010"}))
    assert ds.SOPInstanceUID == sop


def _kept_jpeg(served: Served) -> tuple[str, str, str]:
    (sop,) = [s for s in served.sources if served.source(s).PhotometricInterpretation == "YBR_FULL_422"]
    ds = served.source(sop)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, sop


def test_decoded_frames_of_a_ybr_full_422_jpeg_are_full_size_rgb(client, served) -> None:
    """PS3.5 8.2.1: decompressed, the frame is no longer subsampled; a viewer
    given native pixels of the full size (Cornerstone3D) shows them as RGB.
    They were the decoder's YCbCr: wrong colours."""
    study, series, sop = _kept_jpeg(served)
    source = served.source(sop)
    r = client.get(url(study, series, sop) + "/frames/1", headers={"Accept": UNCOMPRESSED})
    assert r.status_code == 200, r.text
    ((headers, payload),) = multipart_parts(r.headers["content-type"], r.content)
    assert headers["Content-Type"] == f"application/octet-stream; transfer-syntax={LE}"
    rgb = source.pixel_array  # pydicom: decoded and converted to RGB
    assert len(payload) == rgb.size == source.Rows * source.Columns * 3
    np.testing.assert_array_equal(np.frombuffer(payload, np.uint8).reshape(rgb.shape), rgb)


def test_level_on_a_kept_instance_says_levels_need_the_archive_s_htj2k(client, served) -> None:
    study, series, sop = _kept_jpeg(served)
    r = client.get(url(study, series, sop) + "/frames/1?level=0", headers={"Accept": "image/jpeg"})
    assert r.status_code == 400 and r.json()["error"] == "no_levels"
    detail = r.json()["detail"]
    assert "1.2.840.10008.1.2.4.202" in detail and "1.2.840.10008.1.2.4.50" in detail
    assert "accept image/jphc" not in detail  # it accepted its stored type; no header would help


def test_head_is_answered_wherever_get_is(client, served) -> None:
    """RFC 9110 9.3.2: the headers GET would send, no body; errors alike."""
    study, series, sop = served.find("MR")
    instance = url(study, series, sop)
    for path, accept in [("/dicomweb/studies", "*/*"), (f"/dicomweb/studies/{study}/metadata", "*/*"),
                         (instance + "/frames/1", OHIF), (instance + "/rendered", "*/*"),
                         (instance.replace("/dicomweb", "/iiif") + "/frames/1/info.json", "*/*"), ("/", "*/*")]:
        got, head = client.get(path, headers={"Accept": accept}), client.head(path, headers={"Accept": accept})
        assert (head.status_code, head.content) == (200, b""), path
        assert got.status_code == 200 and len(got.content) > 0, path
        for name in ("content-type", "etag", "content-length"):
            assert head.headers.get(name) == got.headers.get(name), (path, name)
    assert client.head("/dicomweb/studies/1.2.3/metadata").status_code == 404


@pytest.mark.parametrize("syntax", [ENCAPSULATED_UNCOMPRESSED, DeflatedExplicitVRLittleEndian])
def test_frames_of_kept_instances_pixel_array_cannot_read_are_decoded(syntax: str, tmp_path) -> None:
    """Kept instances (here: frames over the size cap) that pydicom's
    `pixel_array` cannot read a frame of: Encapsulated Uncompressed (.98),
    which only our fragment decoder knows, and deflated data sets, whose
    offsets are not file offsets. The server answered 500 `cannot_decode`.
    The oracle is the generator."""
    spec = Spec("CT", 40, 50, 3, 16, 12, signed=True, transfer_syntax=syntax)
    source = write(spec, tmp_path / "ct.dcm")
    with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
        report = ingest([source], archive, workers=1, settings=EncodeSettings(max_frame_bytes=1000))
        assert report.counts()["kept"] == 1
        client = TestClient(create_app(archive))
        ds = pydicom.dcmread(source, stop_before_pixels=True)
        u = url(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        r = client.get(f"{u}/frames/3,1", headers={"Accept": UNCOMPRESSED})
        assert r.status_code == 200, r.text
        frames = list(frame_arrays(spec))
        payloads = [payload for _, payload in multipart_parts(r.headers["content-type"], r.content)]
        assert payloads == [frames[2].astype("<i2").tobytes(), frames[0].astype("<i2").tobytes()]
        assert client.get(f"{u}/frames/2/rendered", headers={"Accept": "image/png"}).status_code == 200
