"""`transcode listen`: the C-STORE receiver, against real senders (dcmtk's
echoscu and storescu, pynetdicom), hostile associations, kill -9 and restart,
and the study-complete hooks."""

from __future__ import annotations

import errno
import http.server
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pydicom
import pytest
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification

from fixtures import generate
from tests.conftest import PYDICOM_FILES, ROOT
from tests.peers import free_port, orthanc
from transcode.cli import main
from transcode.dimse.hooks import command_hook, entry_point_hooks, url_hook
from transcode.dimse.receiver import Peer, Receiver
from transcode.dimse.scu import MAXIMUM_PDU
from transcode.policy import Reason
from transcode.transcoder import transcode_file

#: storescu's option proposing each compressed syntax (as received, not decompressed by the sender)
STORESCU_PROPOSE = {"1.2.840.10008.1.2.5": ["-xr"], "1.2.840.10008.1.2.4.90": ["-xv"], "1.2.840.10008.1.2.4.80": ["-xt"],
                    "1.2.840.10008.1.2.4.70": ["-xs"], "1.2.840.10008.1.2.4.50": ["-xy"],
                    "1.2.840.10008.1.2.1.99": ["-xd"], "1.2.840.10008.1.2.2": ["-xb"]}
DCMTK = Path("/usr/bin")  # dcmtk's tools, not pynetdicom's apps of the same names in the venv
MR = "1.2.840.10008.5.1.4.1.1.4"
#: pydicom's files in the transfer syntaxes a modality sends: explicit, implicit, big endian, deflate, RLE,
#: J2K, JPEG-LS, and a lossy JPEG that is kept as received.
SENT = ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_dcmtk.dcm"]


def dcmtk(tool: str) -> str:
    if not (DCMTK / tool).exists():
        pytest.skip(f"dcmtk's {tool} is not installed (Debian package dcmtk)")
    return str(DCMTK / tool)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    r = Receiver(tmp_path / "archive", port=free_port(), workers=1, study_idle=1.0)
    r.start()
    try:
        yield r
    finally:
        r.stop()


def indexed(archive: Path, query: str) -> list[tuple]:
    """The rows of `query` over the archive's index, opened read-only."""
    db = sqlite3.connect(f"file:{archive / 'index.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


def instances(archive: Path) -> dict[str, tuple[str, str | None, str]]:
    """SOP Instance UID -> (outcome, reason, transfer syntax) as the index holds them."""
    return {sop: (outcome, reason, ts) for sop, outcome, reason, ts in
            indexed(archive, "SELECT sop_uid, outcome, reason, transfer_syntax FROM instances")}


def relabel(source: Path, path: Path) -> Path:
    """`source` as a new instance (pydicom's MR_small files are one instance in several syntaxes)."""
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(path)
    return path


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def send(port: int, *items: Path | pydicom.Dataset, calling: str = "MODALITY") -> list[pydicom.Dataset]:
    """C-STORE each item with pynetdicom (a file as its bytes: by default
    pynetdicom reads and re-encodes it, which mends a truncated one); the
    status data sets answered."""
    ae = AE(ae_title=calling)
    for item in items:
        ds = pydicom.dcmread(item, stop_before_pixels=True) if isinstance(item, Path) else item
        sop_class = ds.file_meta.MediaStorageSOPClassUID if isinstance(item, Path) else ds.SOPClassUID
        ae.add_requested_context(sop_class, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="TRANSCODE")
    assert assoc.is_established
    assert assoc.acceptor.maximum_length == MAXIMUM_PDU  # large PDUs: fewer to parse per instance
    chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        return [assoc.send_c_store(item) for item in items]
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        assoc.release()


def test_echo_and_storescu_of_every_transfer_syntax(receiver: Receiver, tmp_path: Path) -> None:
    port = receiver.address[1]
    assert subprocess.run([dcmtk("echoscu"), "-aec", "TRANSCODE", "127.0.0.1", str(port)], check=False).returncode == 0
    files = [relabel(PYDICOM_FILES / name, tmp_path / name) for name in SENT]
    study = generate_uid()
    files += [generate.write(generate.Spec("CT", 96, 80, 2, transfer_syntax=ts, seed=n), tmp_path / f"g{n}.dcm",
                             study=study)
              for n, ts in enumerate([DeflatedExplicitVRLittleEndian, JPEGLosslessSV1, HTJ2KLossless])]
    for path in files[:-1]:  # storescu proposes one compressed syntax at a time, named by its option
        ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        done = subprocess.run([dcmtk("storescu"), "-aec", "TRANSCODE", *STORESCU_PROPOSE.get(ts, []), "127.0.0.1",
                               str(port), str(path)], capture_output=True, text=True, check=False)
        assert done.returncode == 0 and "Store Failed" not in done.stderr, done.stderr
    (answer,) = send(port, files[-1])  # dcmtk 3.6.7 does not know HTJ2K
    assert int(answer.Status) == 0
    stored = instances(receiver.archive.local)
    assert set(stored) == {sop_uid(path) for path in files}
    assert stored[sop_uid(tmp_path / "SC_rgb_jpeg_dcmtk.dcm")][:2] == ("kept", "lossy_source")
    assert {outcome for outcome, _, _ in stored.values()} == {"transcoded", "kept"}
    assert sum(outcome == "transcoded" for outcome, _, _ in stored.values()) == len(files) - 1
    assert not any((receiver.archive.local / "spool" / "incoming").iterdir())
    assert main(["verify", "--archive", str(receiver.archive.local)]) == 0


def test_orthanc_forwards_a_study_in_every_syntax_as_stored(receiver: Receiver, tmp_path: Path) -> None:
    """Orthanc as the sending PACS (`/modalities/.../store`): it proposes each
    instance's own syntax, and we take every one, so nothing is transcoded
    on the way (each arrives with its own pixel bytes)."""
    files = generate.demo_study(tmp_path / "demo")  # eight transfer syntaxes, a lossy JPEG among them
    modality = {"transcode": ["TRANSCODE", "127.0.0.1", receiver.address[1]]}
    with orthanc(tmp_path / "orthanc", modalities=modality) as peer:
        for path in files:
            peer.post("/instances", path.read_bytes())
        (study,) = peer.get("/studies")
        answer = peer.post("/modalities/transcode/store", json.dumps({"Resources": [study]}).encode(),
                           "application/json")
    assert (answer["InstancesCount"], answer["FailedInstancesCount"]) == (12, 0)
    stored = instances(receiver.archive.local)
    assert set(stored) == {sop_uid(path) for path in files}
    assert sorted(outcome for outcome, _, _ in stored.values()) == ["kept"] + ["transcoded"] * 11
    received = dict(indexed(receiver.archive.local, "SELECT sop_uid, bytes_in FROM ledger"))
    for path in files:  # the sources' own data sets, compressed or not: only File Meta's length may differ
        assert abs(received[sop_uid(path)] - path.stat().st_size) < 64, path
    assert main(["verify", "--archive", str(receiver.archive.local)]) == 0


def test_statuses(receiver: Receiver, tmp_path: Path) -> None:
    port = receiver.address[1]
    ct = PYDICOM_FILES / "CT_small.dcm"
    lossy = PYDICOM_FILES / "SC_rgb_jpeg_dcmtk.dcm"
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(ct.read_bytes()[:-3000])  # ends inside Pixel Data
    other = pydicom.dcmread(ct)
    other.PixelData = bytes(len(other.PixelData))  # the same SOP Instance UID, other pixels
    other_path = tmp_path / "other.dcm"
    other.save_as(other_path)
    answers = send(port, ct, lossy, truncated, ct, other_path)
    codes = [int(a.Status) for a in answers]
    assert codes == [0x0000, 0xB000, 0xC000, 0x0000, 0x0111]
    assert "kept: lossy_source" in answers[1].ErrorComment
    assert "truncated" in answers[2].ErrorComment
    assert "conflict" in answers[4].ErrorComment
    stored = instances(receiver.archive.local)
    assert set(stored) == {sop_uid(ct), sop_uid(lossy)}


def test_unknown_sop_class_and_a_data_set_of_another_class(receiver: Receiver, tmp_path: Path) -> None:
    port = receiver.address[1]
    unknown = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    unknown.SOPClassUID = unknown.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.9.9999.1"
    unknown.SOPInstanceUID = unknown.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    unknown_path = tmp_path / "unknown.dcm"
    unknown.save_as(unknown_path)
    mismatch = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")  # a CT data set sent as MR Image Storage
    mismatch.SOPInstanceUID = mismatch.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    mismatch.file_meta.MediaStorageSOPClassUID = MR
    mismatch_path = tmp_path / "mismatch.dcm"
    mismatch.save_as(mismatch_path)
    answers = send(port, unknown_path, mismatch_path)
    assert [int(a.Status) for a in answers] == [0x0000, 0xB007]
    assert "SOP Class UID" in answers[1].ErrorComment
    assert set(instances(receiver.archive.local)) == {unknown.SOPInstanceUID, mismatch.SOPInstanceUID}
    assert main(["verify", "--archive", str(receiver.archive.local)]) == 0


def test_a_lossless_syntax_is_accepted_before_a_lossy_one_proposed_first(receiver: Receiver, tmp_path: Path) -> None:
    """pynetdicom's unrestricted storage service accepted each context's
    first proposed syntax: a sender offering lossy JPEG before Explicit VR
    Little Endian, for an image it holds uncompressed, was told to compress
    it lossily. The receiver now takes the syntax that loses nothing, as
    dcmtk's storescp and Orthanc do; a lossy syntax offered alone is still
    accepted (its instances are kept as received)."""
    ct, us, xa = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.12.1"
    proposed = {ct: [JPEGBaseline8Bit, ExplicitVRLittleEndian], us: [JPEG2000, JPEGLSLossless, ImplicitVRLittleEndian],
                xa: [JPEG2000, JPEG2000Lossless], MR: [JPEGBaseline8Bit]}
    ae = AE(ae_title="MODALITY")
    for sop_class, syntaxes in proposed.items():
        ae.add_requested_context(sop_class, syntaxes)
    assoc = ae.associate("127.0.0.1", receiver.address[1], ae_title="TRANSCODE")
    assert assoc.is_established
    try:
        accepted = {cx.abstract_syntax: cx.transfer_syntax[0] for cx in assoc.accepted_contexts}
        assert accepted == {ct: ExplicitVRLittleEndian, us: ImplicitVRLittleEndian, xa: JPEG2000Lossless,
                            MR: JPEGBaseline8Bit}
        source = generate.write(generate.Spec("CT", 64, 64), tmp_path / "ct.dcm")
        assert int(assoc.send_c_store(source).Status) == 0x0000
    finally:
        assoc.release()
    assert instances(receiver.archive.local)[sop_uid(source)][:2] == ("transcoded", None)


def test_a_full_disk_answers_out_of_resources(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(data: bytes) -> Path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(receiver.spool, "write", full)
    (answer,) = send(receiver.address[1], PYDICOM_FILES / "CT_small.dcm")
    assert int(answer.Status) == 0xA700
    assert "No space left" in answer.ErrorComment


def test_callers_not_allowed_are_rejected(tmp_path: Path) -> None:
    r = Receiver(tmp_path / "archive", port=free_port(), workers=1,
                 accept_from=[Peer.parse("MODALITY@127.0.0.1"), Peer.parse("OTHERHOST@127.0.0.2")])
    r.start()
    try:
        for calling, allowed in [("MODALITY", True), ("STRANGER", False), ("OTHERHOST", False)]:
            ae = AE(ae_title=calling)
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", r.address[1], ae_title="TRANSCODE")
            assert assoc.is_established is allowed and assoc.is_rejected is not allowed, calling
            if allowed:
                assert int(assoc.send_c_echo().Status) == 0
                assoc.release()
    finally:
        r.stop()


def test_fifty_associations_at_once_with_a_limit_of_ten(tmp_path: Path) -> None:
    r = Receiver(tmp_path / "archive", port=free_port(), workers=1, max_associations=10)
    r.start()
    results: list[str] = []
    hold = threading.Event()

    def call() -> None:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = 30
        assoc = ae.associate("127.0.0.1", r.address[1], ae_title="TRANSCODE")
        if assoc.is_established:
            results.append("established")
            hold.wait(30)
            assoc.release()
        else:
            results.append("rejected" if assoc.is_rejected else "other")

    try:
        threads = [threading.Thread(target=call) for _ in range(50)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(results) < 50 and time.monotonic() < deadline:  # every caller answered while 10 are held
            time.sleep(0.1)
        assert len(results) == 50 and results.count("rejected") >= 40, results
        hold.set()
        for t in threads:
            t.join(timeout=60)
            assert not t.is_alive()
        assert results.count("established") <= 10 and results.count("other") == 0
        # the rejection is transient, local limit exceeded: what dcmtk shows the next caller over the limit
        held = [AE(ae_title="HOLD") for _ in range(10)]
        for ae in held:
            ae.add_requested_context(Verification)
        open_ = [ae.associate("127.0.0.1", r.address[1], ae_title="TRANSCODE") for ae in held]
        over = subprocess.run([dcmtk("echoscu"), "-aec", "TRANSCODE", "127.0.0.1", str(r.address[1])],
                              capture_output=True, text=True, timeout=60, check=False)
        for assoc in open_:
            assoc.release()
        assert over.returncode != 0
        assert "Rejected Transient" in over.stderr + over.stdout and "Local Limit Exceeded" in over.stderr + over.stdout
    finally:
        r.stop()


def test_spool_leftovers_are_ingested_at_start(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    incoming = archive / "spool" / "incoming"
    incoming.mkdir(parents=True)
    (incoming / "left.dcm").write_bytes((PYDICOM_FILES / "CT_small.dcm").read_bytes())
    (incoming / "cut.part").write_bytes(b"half a file")
    r = Receiver(archive, port=free_port(), workers=1)
    r.start()
    r.stop()
    assert set(instances(archive)) == {sop_uid(PYDICOM_FILES / "CT_small.dcm")}
    assert not any(incoming.iterdir())


class _Collector(http.server.BaseHTTPRequestHandler):
    posted: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        _Collector.posted.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_study_complete_hooks_fire_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A Python hook registered as an entry point by an installed package (here: a dist-info on sys.path).
    package = tmp_path / "site"
    (package / "studyhook-1.0.dist-info").mkdir(parents=True)
    (package / "studyhook-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: studyhook\n"
                                                                  "Version: 1.0\n")
    (package / "studyhook-1.0.dist-info" / "entry_points.txt").write_text("[transcode.hooks]\nnote = studyhook:note\n")
    (package / "studyhook.py").write_text(f"import json\ndef note(summary):\n"
                                          f"    with open({str(tmp_path / 'ep.jsonl')!r}, 'a') as f:\n"
                                          f"        f.write(json.dumps(summary) + '\\n')\n")
    monkeypatch.syspath_prepend(str(package))
    server = http.server.HTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Collector.posted = []
    hooks = [command_hook(f"cat >> {tmp_path / 'cmd.jsonl'}; echo >> {tmp_path / 'cmd.jsonl'}"),
             command_hook("exit 3"),  # a failing hook is logged; the others still run
             url_hook(f"http://127.0.0.1:{server.server_address[1]}/studies"), *entry_point_hooks()]
    assert len(hooks) == 4
    files = generate.write_ct_series(tmp_path / "series", 3, rows=32, columns=32)
    r = Receiver(tmp_path / "archive", port=free_port(), workers=1, study_idle=1.0, study_hooks=hooks)
    r.start()
    try:
        send(r.address[1], *files[:2])
        send(r.address[1], files[2], calling="SECOND")
        deadline = time.monotonic() + 30
        while not (tmp_path / "ep.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2.5)  # quiet for longer than study_idle again: it must not fire twice
    finally:
        r.stop()
        server.shutdown()
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    series = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    got = [json.loads(line) for line in (tmp_path / "cmd.jsonl").read_text().splitlines() if line]
    got_ep = [json.loads(line) for line in (tmp_path / "ep.jsonl").read_text().splitlines()]
    assert len(got) == len(got_ep) == len(_Collector.posted) == 1
    assert got[0] == got_ep[0] == _Collector.posted[0]
    summary = got[0]
    assert summary["study_uid"] == study and summary["instances"] == 3
    assert summary["series"] == [{"series_uid": series, "instances": 3}]
    assert summary["outcomes"] == {"transcoded": 3}
    assert summary["calling_ae_titles"] == ["MODALITY", "SECOND"]


def test_a_study_waiting_at_stop_fires_after_the_restart(tmp_path: Path) -> None:
    fired = tmp_path / "fired.jsonl"
    hook = command_hook(f"cat >> {fired}; echo >> {fired}")
    files = generate.write_ct_series(tmp_path / "series", 3, rows=32, columns=32)
    r = Receiver(tmp_path / "archive", port=free_port(), workers=1, study_idle=3600, study_hooks=[hook])
    r.start()
    try:
        send(r.address[1], *files[:2])
    finally:
        r.stop()
    assert not fired.exists()  # a stop is not the end of a study
    # Quiet time counts from the restart: long enough for the third instance to arrive first on a loaded machine.
    r = Receiver(tmp_path / "archive", port=free_port(), workers=1, study_idle=5.0, study_hooks=[hook])
    r.start()
    try:
        send(r.address[1], files[2], calling="SECOND")  # the same study goes on after the restart
        deadline = time.monotonic() + 30
        while not fired.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(6)  # quiet for longer than study_idle again: it must not fire twice
    finally:
        r.stop()
    got = [json.loads(line) for line in fired.read_text().splitlines() if line]
    assert len(got) == 1
    assert got[0]["instances"] == 3 and got[0]["outcomes"] == {"transcoded": 3}
    assert got[0]["calling_ae_titles"] == ["MODALITY", "SECOND"]
    assert got[0]["study_uid"] == str(pydicom.dcmread(files[0]).StudyInstanceUID)


def test_kill_9_keeps_the_studies_waiting_for_their_hooks(tmp_path: Path) -> None:
    archive, port, log, fired = tmp_path / "archive", free_port(), tmp_path / "listen.log", tmp_path / "fired.jsonl"
    on_study = ["--on-study", f"cat >> {fired}; echo >> {fired}"]
    files = generate.write_ct_series(tmp_path / "series", 2, rows=32, columns=32)
    process = _listen(archive, port, log, "--study-idle", "3600", *on_study)
    acknowledged, _ = _storescu(port, files)
    assert acknowledged == set(files)
    time.sleep(1.5)  # a tick of the tracker, which writes the waiting studies
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    process = _listen(archive, port, log, "--study-idle", "1", *on_study)
    try:
        deadline = time.monotonic() + 30
        while not fired.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(timeout=60)
    got = [json.loads(line) for line in fired.read_text().splitlines() if line]
    assert [(s["study_uid"], s["instances"]) for s in got] == [(str(pydicom.dcmread(files[0]).StudyInstanceUID), 2)]


def _listen(archive: Path, port: int, log: Path, *options: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "transcode.cli", "listen", "--archive", str(archive),
                                    "--port", str(port), "--workers", "1", *options], stdout=out,
                                   stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 60
    while subprocess.run([dcmtk("echoscu"), "-aec", "TRANSCODE", "127.0.0.1", str(port)],
                         capture_output=True, check=False).returncode != 0:
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    return process


def _storescu(port: int, files: list[Path]) -> tuple[set[Path], subprocess.CompletedProcess[str]]:
    """Send `files` with dcmtk; the files whose store storescu reported successful."""
    done = subprocess.run([dcmtk("storescu"), "-v", "-aec", "TRANSCODE", "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=300, check=False)
    acknowledged, current = set(), None
    for line in done.stdout.splitlines() + done.stderr.splitlines():
        if "Sending file: " in line:
            current = Path(line.split("Sending file: ", 1)[1].strip())
        elif "Received Store Response (Success)" in line and current is not None:
            acknowledged.add(current)
    return acknowledged, done


@pytest.mark.parametrize("ack", ["archived", "spooled"])
def test_kill_9_during_a_run_loses_nothing_acknowledged(tmp_path: Path, ack: str) -> None:
    """Killed once about a third is archived: everything answered Success
    is archived after the restart (under --ack spooled, most of it was
    answered before it was archived)."""
    files = generate.write_ct_series(tmp_path / "series", 100, rows=64, columns=64)
    archive, port, log = tmp_path / "archive", free_port(), tmp_path / "listen.log"
    process = _listen(archive, port, log, "--ack", ack)
    sender = threading.Thread(target=lambda: result.append(_storescu(port, files)))
    result: list[tuple[set[Path], subprocess.CompletedProcess[str]]] = []
    sender.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(instances(archive)) < 30:  # kill once about a third has arrived
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        sender.join(timeout=120)
    acknowledged, _ = result[0]
    assert 0 < len(acknowledged) <= 100
    if ack == "archived":
        assert len(acknowledged) < 100  # the one in flight may be archived and not yet answered
    process = _listen(archive, port, log, "--ack", ack)  # drains the spool first
    try:
        stored = instances(archive)
        assert {sop_uid(path) for path in acknowledged} <= set(stored)  # nothing acknowledged is missing
        resend = [path for path in files if path not in acknowledged]
        again, done = _storescu(port, resend)
        assert again == set(resend), done.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    stored = instances(archive)
    assert set(stored) == {sop_uid(path) for path in files}  # every instance, once (one row per SOP UID)
    assert {outcome for outcome, _, _ in stored.values()} == {"transcoded"}
    assert main(["verify", "--archive", str(archive)]) == 0


def test_spooled_ack_answers_success_and_keeps_what_fails(tmp_path: Path) -> None:
    """--ack spooled: every readable instance is answered Success, the kept
    one too; one that cannot be archived (truncated) is set aside with its
    bytes in spool/failed, and the ledger says why."""
    files = generate.write_ct_series(tmp_path / "series", 3, rows=32, columns=32)
    kept = relabel(PYDICOM_FILES / "SC_rgb_jpeg_dcmtk.dcm", tmp_path / "kept.dcm")
    whole = relabel(PYDICOM_FILES / "MR_small_implicit.dcm", tmp_path / "whole.dcm")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(whole.read_bytes()[:5000])
    archive = tmp_path / "archive"
    r = Receiver(archive, port=free_port(), workers=1, ack="spooled", backlog=2)
    r.start()
    try:
        statuses = send(r.address[1], *files, kept, truncated)
    finally:
        r.stop()  # archives what was answered and is still queued
    assert [status.Status for status in statuses] == [0] * 5
    stored = instances(archive)
    assert {sop_uid(path): stored[sop_uid(path)][0] for path in [*files, kept]} == \
        {**{sop_uid(path): "transcoded" for path in files}, sop_uid(kept): "kept"}
    assert sop_uid(truncated) not in stored
    [failed] = (archive / "spool" / "failed").iterdir()
    assert pydicom.dcmread(failed, stop_before_pixels=True).SOPInstanceUID == sop_uid(truncated)
    assert not list((archive / "spool" / "incoming").iterdir())
    assert indexed(archive, "SELECT reason FROM ledger WHERE outcome = 'failed'") == [("truncated",)]


def test_importing_pynetdicom_changes_no_reason(corpus: Path, tmp_path: Path) -> None:
    """pynetdicom (imported here, as by the receiver) adds Deflated Image
    Frame Compression to pydicom's transfer syntaxes, as compressed: a
    lossless syntax the reader does not decode must still be kept as
    unsupported, not as a lossy source."""
    result = transcode_file(corpus / "liver_deflate.dcm", tmp_path / "out.dcm")
    assert result.reason is Reason.UNSUPPORTED_TRANSFER_SYNTAX, result.detail
