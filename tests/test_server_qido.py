"""QIDO-RS: the matching OHIF relies on, over the archive index."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient

from fixtures.generate import Spec, write
from tests.served import Served
from transcode.archive import FolderArchive
from transcode.pipeline import ingest
from transcode.server import create_app


@pytest.fixture(scope="module")
def client(served: Served):
    with FolderArchive(served.root) as archive:
        yield TestClient(create_app(archive))


def uids(client: TestClient, path: str, tag: str = "0020000D") -> set[str]:
    r = client.get("/dicomweb" + path)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom+json"
    return {item[tag]["Value"][0] for item in r.json()}


@pytest.mark.parametrize(("query", "which"), [
    ("", "ab"),
    ("?PatientName=other*", "b"),            # wildcard, case-insensitive for names
    ("?PatientName=*PATIENT", "a"),
    ("?PatientName=Demo^Patient", "a"),
    ("?00100020=PID-0002", "b"),             # a tag instead of a keyword
    ("?PatientID=PID-000?", "ab"),
    ("?StudyDate=20250101-20251231", "b"),   # date ranges
    ("?StudyDate=-20251231", "b"),
    ("?StudyDate=20260101-", "a"),
    ("?StudyDate=20260101", "a"),
    ("?AccessionNumber=ACC-0002", "b"),
    ("?ModalitiesInStudy=US", "a"),          # matched against the study's series
    ("?ModalitiesInStudy=CR", "b"),
    ("?ModalitiesInStudy=US,CR", "ab"),      # OHIF's filter, two modalities picked: either
    ("?ModalitiesInStudy=XA%5CMR", "a"),     # the DICOM value separator, a backslash
    ("?Modality=X?,C*", "ab"),
    ("?StudyDescription=Chest [PA],x", ""),  # only codes are lists: a comma in a description is itself
    ("?Modality=MR", "a"),
    ("?StudyDescription=Chest [PA]", "b"),   # brackets are not a pattern
    ("?SOPClassUID=1.2.840.10008.5.1.4.1.1.1", "b"),  # an instance-level key at study level
    ("?PatientName=Nobody", ""),
    ("?PatientName=&fuzzymatching=false", "ab"),    # empty: universal match
])
def test_study_matching(client, served, query, which) -> None:
    expected = {"a": served.study_a, "b": served.study_b}
    assert uids(client, "/studies" + query) == {expected[c] for c in which}


def test_study_list_matching_by_uid_and_paging(client, served) -> None:
    both = f"{served.study_a},{served.study_b}"
    assert uids(client, f"/studies?StudyInstanceUID={both}") == {served.study_a, served.study_b}
    ohif = f"{served.study_a}%5C{served.study_b}"  # OHIF joins the UIDs of a multi-study URL with backslashes
    assert uids(client, f"/studies?StudyInstanceUID={ohif}") == {served.study_a, served.study_b}
    first = uids(client, "/studies?limit=1")
    second = uids(client, "/studies?limit=1&offset=1")
    assert len(first) == len(second) == 1 and first != second
    assert uids(client, "/studies?offset=2") == set()


def test_study_results_carry_what_ohif_lists(client, served) -> None:
    (study,) = client.get(f"/dicomweb/studies?StudyInstanceUID={served.study_a}").json()
    assert study["00080061"]["Value"] == ["CT", "MR", "US"]
    assert study["00201206"]["Value"] == [3] and study["00201208"]["Value"] == [6]
    assert study["00100010"]["Value"] == [{"Alphabetic": "Demo^Patient"}]
    assert study["00081190"]["Value"][0].endswith(f"/dicomweb/studies/{served.study_a}")
    # includefield: from a representative instance when the study row does not hold it; empty if absent
    (study,) = client.get(f"/dicomweb/studies?StudyInstanceUID={served.study_a}"
                          "&includefield=00204000,SOPClassUID&includefield=00081030").json()
    assert "00080016" in study and study["00204000"]["Value"] == ["Synthetic phantom ü — not a patient"]
    assert study["00081030"] == {"vr": "LO"}


def test_series_and_instances(client, served) -> None:
    series = client.get(f"/dicomweb/studies/{served.study_a}/series").json()
    assert sorted(s["00080060"]["Value"][0] for s in series) == ["CT", "MR", "US"]
    ct = next(s for s in series if s["00080060"]["Value"][0] == "CT")
    assert ct["00201209"]["Value"] == [3]
    ct_uid = ct["0020000E"]["Value"][0]
    instances = client.get(f"/dicomweb/studies/{served.study_a}/series/{ct_uid}/instances").json()
    assert [i["00200013"]["Value"][0] for i in instances] == [1, 2, 3]
    assert all(i["00083002"]["Value"] == ["1.2.840.10008.1.2.4.202"] for i in instances)
    assert uids(client, "/series?Modality=CT", "0020000E") == {ct_uid}
    assert uids(client, f"/series?SeriesInstanceUID={ct_uid}", "0020000D") == {served.study_a}
    everything = client.get(f"/dicomweb/studies/{served.study_a}/instances?includefield=all").json()
    assert len(everything) == 6 and all("00280100" in i and "00204000" in i for i in everything)
    assert uids(client, "/instances?Modality=CR", "0020000D") == {served.study_b}
    syntaxes = sorted(i["00083002"]["Value"][0] for i in everything)
    assert syntaxes == ["1.2.840.10008.1.2.4.202"] * 5 + ["1.2.840.10008.1.2.4.50"]  # the JPEG kept as is


@pytest.mark.parametrize(("query", "error"), [
    ("?NoSuchKeyword=1", "bad_query"),
    ("?limit=-1", "bad_query"),
    ("?offset=x", "bad_query"),
    ("?00081111.00081150=1.2", "bad_query"),
])
def test_bad_queries_are_400_with_a_reason(client, query, error) -> None:
    r = client.get("/dicomweb/studies" + query)
    assert r.status_code == 400 and r.json()["error"] == error


def test_search_answers_json_only(client) -> None:
    assert client.get("/dicomweb/studies", headers={"Accept": "application/xml"}).status_code == 406
    assert client.get("/dicomweb/studies", headers={"Accept": "application/json"}).status_code == 200


@pytest.mark.parametrize("query", ["Müller^Jürgen", "müller^jürgen", "MÜLLER*", "*jürgen", "M?LLER^J?RGEN",
                                   "山田^太郎", "山田*", "やまだ*", "müller^jürgen=山田^太郎=やまだ^たろう",
                                   "Müller*=山田*", "Müller^Jürgen="])
def test_names_in_any_script_match_whatever_their_case(query: str, tmp_path: Path) -> None:
    """SQLite's upper() changes ASCII letters only: 'Müller' became 'MüLLER'
    in the index and 'MÜLLER' in the query, so not even the exact name
    matched. Only the Alphabetic group was searched: a name typed in kanji
    or kana found nothing. The whole name, its groups joined by `=` as
    DICOM writes it (and as pydicom's str() shows it), matched no group."""
    (tmp_path / "src").mkdir()
    ds = pydicom.dcmread(write(Spec("CT", 16, 16), tmp_path / "src" / "ct.dcm"))
    ds.SpecificCharacterSet, ds.PatientName = "ISO_IR 192", "Müller^Jürgen=山田^太郎=やまだ^たろう"
    ds.save_as(tmp_path / "src" / "ct.dcm")
    with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
        ingest([tmp_path / "src"], archive, workers=1)
        client = TestClient(create_app(archive))
        r = client.get("/dicomweb/studies", params={"PatientName": query})
        assert r.status_code == 200 and len(r.json()) == 1, (query, r.text)
        assert client.get("/dicomweb/studies", params={"PatientName": "Muller*"}).json() == []


def test_an_empty_name_among_several_is_archived_null_and_the_others_found(tmp_path: Path) -> None:
    """pydicom 3.0 raises IndexError writing such a Person Name as DICOM
    JSON, at any depth: the instance was kept as `transcode_error`, its
    pixels not transcoded. PS3.18 F.2.5 writes the empty value as null."""
    (tmp_path / "src").mkdir()
    ds = pydicom.dcmread(write(Spec("CT", 16, 16), tmp_path / "src" / "ct.dcm"))
    ds.OtherPatientNames = ["Doe^Jane", "", "Roe^Jane"]
    item = pydicom.Dataset()
    item.PersonName = ["", "Poe^Jane"]
    ds.ContentSequence = [item]
    ds.save_as(tmp_path / "src" / "ct.dcm")
    with FolderArchive(tmp_path / "archive", exclusive=True) as archive:
        (entry,) = ingest([tmp_path / "src"], archive, workers=1).entries
        assert (entry.outcome, entry.reason) == ("transcoded", None), entry.detail
        client = TestClient(create_app(archive))
        (found,) = client.get("/dicomweb/instances", params={"OtherPatientNames": "roe*", "includefield": "all"}).json()
    assert found["00101001"]["Value"] == [{"Alphabetic": "Doe^Jane"}, None, {"Alphabetic": "Roe^Jane"}]
    assert found["0040A730"]["Value"][0]["0040A123"]["Value"] == [None, {"Alphabetic": "Poe^Jane"}]

