"""The audit trail: what each endpoint writes, the hash chain across
rotation, restarts and concurrent writers, tampering found by `transcode
audit verify`, the FHIR export, and an access log without patient data."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.served import Served
from transcode.archive import FolderArchive
from transcode.archive.objects import ArchiveAddress
from transcode.cli import main
from transcode.security import AUDIT_FOLDER, commands
from transcode.security.audit import AuditEvent, AuditLog, Touched, files, records, verify
from transcode.security.guard import Security
from transcode.server import create_app


def event(n: int, who: str = "alice") -> AuditEvent:
    return AuditEvent(who, "127.0.0.1", "retrieve", "GET", "/dicomweb/studies/{study}", 200, "success",
                      (Touched(f"1.2.3.{n}"),))


def trail(folder: Path, count: int, **options: object) -> Path:
    with AuditLog(folder, **options) as audit:
        for n in range(count):
            audit.record(event(n))
    return folder


def lines_of(folder: Path) -> list[dict]:
    return [record for _, _, record in records(folder) if record is not None]


def audit_verify(folder: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["audit", "verify", "--audit-dir", str(folder)])
    return code, capsys.readouterr().out


def test_a_whole_trail_verifies(tmp_path, capsys) -> None:
    folder = trail(tmp_path / "audit", 20)
    code, out = audit_verify(folder, capsys)
    assert code == 0, out
    assert f"20 lines, 0 problems; head {lines_of(folder)[-1]['hash']}" in out


@pytest.mark.parametrize("tamper", ["edit", "delete", "reorder", "insert"])
def test_tampering_is_reported_with_its_line(tmp_path, capsys, tamper) -> None:
    folder = trail(tmp_path / "audit", 10)
    path = folder / "audit.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    if tamper == "edit":
        lines[4] = lines[4].replace('"who":"alice"', '"who":"bob"')
    elif tamper == "delete":
        del lines[4]
    elif tamper == "reorder":
        lines[4], lines[5] = lines[5], lines[4]
    else:
        lines.insert(4, lines[2])
    path.write_text("".join(lines))
    code, out = audit_verify(folder, capsys)
    assert code == 1
    assert out.splitlines()[0].startswith("audit.jsonl:5: "), out


@pytest.mark.parametrize("separate", [False, True], ids=["thread", "process"])
def test_the_chain_runs_on_across_rotation_restarts_and_two_writers(tmp_path, capsys, separate) -> None:
    folder = tmp_path / "audit"
    trail(folder, 30, max_bytes=2000, separate=separate)  # a few lines a file
    trail(folder, 30, max_bytes=2000, separate=separate)  # a restart: the last hash is read back from the files
    writers = [AuditLog(folder, max_bytes=2000, separate=separate) for _ in range(2)]  # as two uvicorn workers

    def write(audit: AuditLog, who: str) -> None:
        for n in range(50):
            audit.record(event(n, who))
            if n % 7 == 0:
                audit.flush()

    threads = [threading.Thread(target=write, args=(w, f"worker-{i}")) for i, w in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w in writers:
        w.close()
    assert len(files(folder)) > 10
    result = verify(folder)
    assert result.problems == () and result.lines == 160
    assert [r["seq"] for r in lines_of(folder)] == list(range(1, 161))
    # Removing a whole rotated file breaks the chain at the next one.
    files(folder)[3].unlink()
    code, out = audit_verify(folder, capsys)
    assert code == 1 and ":1: does not follow the line before" in out.splitlines()[0]


def test_the_trail_process_ignores_group_signals_and_is_replaced_when_killed(tmp_path, caplog) -> None:
    """`serve`'s trail process ends only when the server closes the pipe
    (Ctrl-C and a service manager's SIGTERM reach the whole group, and the
    server still has lines to send); killed, it is replaced by the next batch."""
    folder = tmp_path / "audit"
    with AuditLog(folder, separate=True) as audit:
        audit.record(event(0))
        assert audit.flush()
        first = audit._sink.pid
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            os.kill(first, signal_number)
        audit.record(event(1))
        assert audit.flush() and audit._sink.pid == first
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{first}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":  # dead, not yet reaped
            assert time.monotonic() < deadline
            time.sleep(0.01)
        audit.record(event(2))
        assert audit.flush()
        assert audit._sink.pid != first
    assert "the audit trail's process ended" in caplog.text
    result = verify(folder)
    assert result.problems == () and [r["touched"][0]["study"] for r in lines_of(folder)] == ["1.2.3.0", "1.2.3.1",
                                                                                             "1.2.3.2"]


@pytest.fixture(scope="module")
def audited(served: Served, tmp_path_factory: pytest.TempPathFactory):
    """The served archive (a copy) with the trail on and authentication off."""
    root = tmp_path_factory.mktemp("audited")
    shutil.copytree(served.root, root / "archive")
    with FolderArchive(root / "archive") as archive:
        audit = AuditLog(root / "audit", catalog=archive.root, separate=True)  # as `serve` runs it
        with TestClient(create_app(archive, security=Security(audit=audit))) as client:
            yield client, audit, root / "audit"


def test_every_endpoint_writes_what_it_touched(audited, served) -> None:
    client, audit, folder = audited
    study, series, sop = served.find("CT")
    patient = served.source(sop).PatientID
    i = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    expected = [  # url, action, route template's tail, touched
        ("/dicomweb/studies?PatientName=Other*", "search", "/studies", []),
        (f"/dicomweb/studies/{study}/series", "search", "/studies/{study}/series", [{"study": study}]),
        (f"/dicomweb/studies/{study}", "retrieve", "/studies/{study}", [{"study": study}]),
        (f"{i}/metadata", "retrieve", "/instances/{sop}/metadata",
         [{"study": study, "series": series, "instance": sop}]),
        (f"{i}/frames/1", "retrieve", "/instances/{sop}/frames/{frames}",
         [{"study": study, "series": series, "instance": sop}]),
        (f"{i}/rendered", "render", "/instances/{sop}/rendered", [{"study": study, "series": series, "instance": sop}]),
        (f"{i}/thumbnail", "render", "/instances/{sop}/thumbnail",
         [{"study": study, "series": series, "instance": sop}]),
        ("/dicomweb/studies/1.2.3.4.5", "retrieve", "/studies/{study}", [{"study": "1.2.3.4.5"}]),
    ]
    statuses = [client.get(url, headers={"Accept": "*/*"}).status_code for url, *_ in expected]
    assert audit.flush()
    lines = lines_of(folder)[-len(expected):]
    for (url, action, route, touched), status, line in zip(expected, statuses, lines, strict=True):
        assert (line["action"], line["status"], line["who"], line["from"]) == (action, status, "anonymous",
                                                                              "testclient"), url
        assert line["route"].endswith(route), (url, line["route"])
        unknown = touched and touched[0]["study"] == "1.2.3.4.5"
        assert line["touched"] == [{**t, "patient": None if unknown else patient} for t in touched], url
        assert line["outcome"] == ("failure" if unknown else "success")
    assert lines[0]["query"] == "PatientName=Other*"
    assert verify(folder).problems == ()


def test_the_access_log_names_routes_not_urls(audited, served, caplog) -> None:
    client, _, _ = audited
    with caplog.at_level(logging.INFO, logger="transcode.access"):
        client.get(f"/dicomweb/studies?PatientName=Other*&PatientBirthDate=19700101&StudyInstanceUID={served.study_b}")
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "transcode.access")
    assert "GET /dicomweb/studies 200" in text
    assert "Other" not in text and "1970" not in text and served.study_b not in text


def test_export_as_fhir_audit_events(audited, served, capsys) -> None:
    client, audit, folder = audited
    study, series, sop = served.find("CT")
    client.get(f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/metadata")
    assert audit.flush()
    capsys.readouterr()
    assert main(["audit", "export", "--audit-dir", str(folder)]) == 0
    bundle = json.loads(capsys.readouterr().out)
    assert bundle["resourceType"] == "Bundle" and len(bundle["entry"]) == len(lines_of(folder))
    last = bundle["entry"][-1]["resource"]
    assert last["resourceType"] == "AuditEvent" and last["action"] == "R" and last["outcome"] == "0"
    assert last["type"]["code"] == "110103"
    identifiers = [e["what"]["identifier"]["value"] for e in last["entity"]]
    assert identifiers == [f"urn:oid:{study}", served.source(sop).PatientID]


def test_lines_with_odd_text_verify(tmp_path) -> None:
    """The writer spells canonical JSON itself; `verify` re-encodes with the JSON encoder: they must agree."""
    odd = ['Zoë "the" \\admin\\', "tab\there\nnewline", "emoji 😀 and \u2028", "", "ascii"]
    with AuditLog(tmp_path / "audit") as audit:
        for n, text in enumerate(odd):
            audit.record(AuditEvent(text, text or "-", "search", "GET", f"/r/{text}", 200 + n, "success",
                                    (Touched(text or None, None, "1.2"), Touched()), query=text or None))
    result = verify(tmp_path / "audit")
    assert result.problems == () and result.lines == len(odd)
    assert [r["who"] for r in lines_of(tmp_path / "audit")] == odd


def test_listen_keeps_the_trail_of_a_store_archive_in_its_local_folder(tmp_path) -> None:
    """`transcode listen --archive s3://...`: the trail goes to the node's
    local folder (the catalog folder here), as `serve`'s does."""
    args = argparse.Namespace(no_audit=False, audit_dir=None)
    with commands.listen_audit(args, ArchiveAddress("s3://bucket/archive", str(tmp_path / "catalog"))) as audit:
        audit.record(event(1))
    assert [line["who"] for line in lines_of(tmp_path / "catalog" / AUDIT_FOLDER)] == ["alice"]


def test_a_head_request_is_recorded_as_a_head(audited, served) -> None:
    """HEAD is answered as GET inside the app, but the trail says what was asked."""
    client, audit, folder = audited
    study, series, sop = served.find("CT")
    assert client.head(f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/metadata").status_code == 200
    assert audit.flush()
    (line,) = lines_of(folder)[-1:]
    assert (line["method"], line["action"], line["status"]) == ("HEAD", "retrieve", 200)
    assert line["touched"][0]["instance"] == sop


def test_a_wado_uri_request_is_recorded_as_what_it_stands_for(audited, served) -> None:
    """WADO-URI names the instance in its query: the trail records the
    retrieve or render of that instance, as for WADO-RS."""
    client, audit, folder = audited
    study, series, sop = served.find("CT")
    query = f"requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
    assert client.get(f"/wado?{query}&contentType=application/dicom").status_code == 200
    assert client.get(f"/dicomweb?{query}").status_code == 200  # image/jpeg: a single-frame image
    assert audit.flush()
    retrieved, rendered = lines_of(folder)[-2:]
    assert (retrieved["action"], rendered["action"]) == ("retrieve", "render")
    assert {line["touched"][0]["instance"] for line in (retrieved, rendered)} == {sop}
