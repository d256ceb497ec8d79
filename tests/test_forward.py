"""Forwarding archived instances: C-STORE to a real Orthanc (also down, then
up, across a restart of the forwarder), STOW-RS to our own server."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRBigEndian, JPEGBaseline8Bit, RLELossless, generate_uid
from pynetdicom import AE, StoragePresentationContexts, evt

from fixtures.generate import Spec, write
from tests.peers import Orthanc, free_port, orthanc
from tests.test_server_live import serve
from transcode.archive import FolderArchive
from transcode.archive.objects import ArchiveAddress
from transcode.dimse.forward import Forwarder
from transcode.dimse.scu import TRANSFER_SYNTAXES, RemoteAE
from transcode.entries import Entry, IngestOutcome
from transcode.service import IngestService
from transcode.stores import MemoryStore


def archive_of(root: Path | ArchiveAddress, sources: Path) -> tuple[list[Entry], dict[str, Path]]:
    """An archive of a transcoded CT (RLE source), a transcoded MR (big
    endian source) and a JPEG kept as is; its entries and SOP UID -> source."""
    sources.mkdir()
    study = generate_uid()
    files = [write(Spec("CT", 32, 32, 1, 16, 12, transfer_syntax=RLELossless, seed=1), sources / "ct.dcm",
                   study=study),
             write(Spec("MR", 16, 16, 2, 16, 12, transfer_syntax=ExplicitVRBigEndian, seed=2), sources / "mr.dcm",
                   study=study),
             write(Spec("US", 16, 16, 1, 8, 8, samples=3, photometric="YBR_FULL_422",
                        transfer_syntax=JPEGBaseline8Bit), sources / "us.dcm", study=study)]
    service = IngestService(root, workers=1)
    try:
        entries = service.store(files)
    finally:
        service.close()
    assert [e.outcome for e in entries] == ["transcoded", "transcoded", "kept"]
    return entries, {e.sop_uid: Path(e.source_path) for e in entries}


def held_by(peer: Orthanc) -> dict[str, pydicom.Dataset]:
    """SOP Instance UID -> the instance as Orthanc stored it."""
    held = {}
    for instance in peer.get("/instances"):
        with urllib.request.urlopen(f"{peer.url}/instances/{instance}/file", timeout=30) as response:
            ds = pydicom.dcmread(io.BytesIO(response.read()))
        held[str(ds.SOPInstanceUID)] = ds
    return held


def held_once(peer: Orthanc, count: int, *, wait: float) -> dict[str, pydicom.Dataset]:
    """What `peer` holds once it holds `count` instances, or after `wait` seconds."""
    deadline = time.monotonic() + wait
    while len(peer.get("/instances")) < count and time.monotonic() < deadline:
        time.sleep(0.5)
    return held_by(peer)


def assert_same_pixels(sent: dict[str, pydicom.Dataset], sources: dict[str, Path]) -> None:
    assert set(sent) == set(sources)
    for sop, ds in sent.items():
        source = pydicom.dcmread(sources[sop])
        if source.file_meta.TransferSyntaxUID == JPEGBaseline8Bit:  # kept as is: the same bytes went
            assert ds.file_meta.TransferSyntaxUID in (JPEGBaseline8Bit, "1.2.840.10008.1.2.1")
            if ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit:
                assert ds.PixelData == source.PixelData
            continue
        np.testing.assert_array_equal(ds.pixel_array, source.pixel_array)


def forward_all(root: Path | ArchiveAddress, peer: RemoteAE | str, entries: list[Entry], *, wait: float = 60) -> None:
    """Queue `entries` for `peer` and wait (at most `wait` s) until all are sent."""
    forwarder = Forwarder(root, peer)
    forwarder.start()
    try:
        for entry in entries:
            forwarder.on_archived(entry)
        assert forwarder.drain(wait), forwarder.pending()
    finally:
        forwarder.close()


@pytest.mark.parametrize("backend", ["folder", "store"])
def test_c_store_forwarding_sends_what_the_peer_accepts(tmp_path: Path, backend: str) -> None:
    """From a folder archive, and from a store archive (objects in memory,
    the queue in its catalog folder)."""
    archive = tmp_path / "archive" if backend == "folder" else \
        ArchiveAddress("memory", str(tmp_path / "catalog"), store=MemoryStore())
    entries, sources = archive_of(archive, tmp_path / "sources")
    with orthanc(tmp_path / "orthanc") as peer:
        forward_all(archive, RemoteAE(peer.aet, "127.0.0.1", peer.dicom_port), entries)
        sent = held_by(peer)
    assert_same_pixels(sent, sources)
    # Orthanc 1.10 (dcmtk 3.6.7) has no HTJ2K: the transcoded instances went decoded, uncompressed
    syntaxes = {str(ds.file_meta.TransferSyntaxUID) for ds in sent.values()}
    assert syntaxes <= {"1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.1", JPEGBaseline8Bit}


def test_a_peer_that_takes_every_syntax_gets_the_stored_bytes(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    entries, _ = archive_of(root, tmp_path / "sources")
    received: dict[str, tuple[str, bytes]] = {}

    def on_store(event: evt.Event) -> int:
        received[str(event.request.AffectedSOPInstanceUID)] = (str(event.context.transfer_syntax),
                                                               event.encoded_dataset(include_meta=False))
        return 0

    ae = AE("PEER")
    for cx in StoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, list(TRANSFER_SYNTAXES))
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        forward_all(root, RemoteAE("PEER", "127.0.0.1", port), entries)
    finally:
        server.shutdown()
    with FolderArchive(root, read_only=True) as archive:
        rows = list(archive.index.instances())
    assert {r.transfer_syntax for r in rows} == {"1.2.840.10008.1.2.4.202", JPEGBaseline8Bit}
    for row in rows:
        syntax, data = received[row.sop_uid]
        assert syntax == row.transfer_syntax  # .202 as stored, the kept JPEG as stored
        assert (root / row.path).read_bytes().endswith(data)  # the data set's bytes, not re-encoded


def test_a_peer_down_is_retried_and_nothing_is_lost_across_a_restart(tmp_path: Path) -> None:
    entries, sources = archive_of(tmp_path / "archive", tmp_path / "sources")
    port = free_port()
    peer_ae = RemoteAE("ORTHANC", "127.0.0.1", port)
    forwarder = Forwarder(tmp_path / "archive", peer_ae, retry_base=0.1, retry_max=0.5)
    forwarder.start()
    for entry in entries:
        forwarder.on_archived(entry)
    time.sleep(1.5)  # several attempts against a closed port
    assert forwarder.pending() == {"queued": 3}
    forwarder.close()  # the receiver stops: the queue stays on disk

    with orthanc(tmp_path / "orthanc", config={"DicomPort": port}) as peer:
        forwarder = Forwarder(tmp_path / "archive", peer_ae, retry_base=0.1, retry_max=0.5)
        forwarder.start()
        try:
            assert forwarder.drain(60), forwarder.pending()
        finally:
            forwarder.close()
        assert_same_pixels(held_by(peer), sources)


def test_an_instance_the_peer_refuses_is_given_up_after_max_attempts(tmp_path: Path) -> None:
    entries, _ = archive_of(tmp_path / "archive", tmp_path / "sources")
    # this Orthanc takes nothing but Implicit VR Little Endian: no .202, no Explicit VR LE
    with orthanc(tmp_path / "orthanc", config={"AcceptedTransferSyntaxes": ["1.2.840.10008.1.2"]}) as peer:
        forwarder = Forwarder(tmp_path / "archive", RemoteAE(peer.aet, "127.0.0.1", peer.dicom_port),
                              retry_base=0.05, retry_max=0.1, max_attempts=3)
        forwarder.start()
        try:
            forwarder.on_archived(entries[0])
            duplicate = dataclasses.replace(entries[1], outcome=IngestOutcome.DUPLICATE)
            forwarder.on_archived(duplicate)  # not a new version: not forwarded
            deadline = time.monotonic() + 30
            while not forwarder.failures() and time.monotonic() < deadline:
                time.sleep(0.05)
            ((sop, attempts, error),) = forwarder.failures()
        finally:
            forwarder.close()
    assert sop == entries[0].sop_uid and attempts == 3 and "accepts none of" in error


def test_stow_forwarding_to_our_own_server(tmp_path: Path) -> None:
    entries, sources = archive_of(tmp_path / "archive", tmp_path / "sources")
    with FolderArchive(tmp_path / "peer") as peer_archive:
        for url in serve(peer_archive):
            forward_all(tmp_path / "archive", f"{url}/studies", entries, wait=120)
    with FolderArchive(tmp_path / "peer", read_only=True) as peer_archive:
        rows = {r.sop_uid: r for r in peer_archive.index.instances()}
        assert set(rows) == set(sources)
        assert {r.outcome for r in rows.values()} == {"transcoded", "kept"}
        for sop, row in rows.items():
            if row.outcome == "transcoded":
                np.testing.assert_array_equal(pydicom.dcmread(tmp_path / "peer" / row.path).pixel_array,
                                              pydicom.dcmread(sources[sop]).pixel_array)


def test_listen_forwards_what_it_archives(tmp_path: Path) -> None:
    """`transcode listen --forward`: a modality's instance, sent with dcmtk's
    storescu, is archived and sent on to the PACS (here an Orthanc 1.10,
    which takes no .202: it gets Explicit VR Little Endian, same pixels)."""
    storescu = Path("/usr/bin/storescu")  # dcmtk's, not pynetdicom's app of the same name
    if not storescu.exists():
        pytest.skip("dcmtk is not installed")
    src = write(Spec("CT", 64, 64, 1), tmp_path / "ct.dcm")
    with orthanc(tmp_path / "orthanc") as peer:
        port = free_port()
        listen = subprocess.Popen(
            [sys.executable, "-m", "transcode.cli", "listen", "--archive", str(tmp_path / "archive"),
             "--port", str(port), "--forward", f"{peer.aet}@127.0.0.1:{peer.dicom_port}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert "Storage SCP" in (listen.stdout.readline() if listen.stdout else "")
            sent = subprocess.run([str(storescu), "-aec", "TRANSCODE", "127.0.0.1", str(port), str(src)],
                                  capture_output=True, text=True, timeout=60, check=False)
            assert sent.returncode == 0, sent.stderr
            held = held_once(peer, 1, wait=60)
        finally:
            listen.terminate()
            listen.wait(timeout=60)
    assert len(held) == 1
    (ds,) = held.values()
    np.testing.assert_array_equal(ds.pixel_array, pydicom.dcmread(src).pixel_array)


def _listen_forwarding(archive: Path, port: int, peer: RemoteAE, log: Path) -> subprocess.Popen[bytes]:
    """`transcode listen --forward peer` on `port`, once it answers C-ECHO."""
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "transcode.cli", "listen", "--archive", str(archive),
                                    "--port", str(port), "--workers", "1", "--forward", str(peer)],
                                   stdout=out, stderr=subprocess.STDOUT)
    ae = AE("PROBE")
    ae.add_requested_context("1.2.840.10008.1.1")
    for _ in range(300):  # bounded: 60 s
        assoc = ae.associate("127.0.0.1", port, ae_title="TRANSCODE")
        if assoc.is_established:
            assoc.release()
            return process
        assert process.poll() is None, log.read_text()
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"listen did not start: {log.read_text()}")


def test_kill_9_with_the_peer_down_loses_nothing_to_forward(tmp_path: Path) -> None:
    """Instances acknowledged while the PACS is down are in the forwarding
    queue on disk: after a kill -9 of the receiver, the PACS coming up and
    a restart, the PACS gets every one of them."""
    storescu = Path("/usr/bin/storescu")  # dcmtk's, not pynetdicom's app of the same name
    if not storescu.exists():
        pytest.skip("dcmtk is not installed")
    sources = [write(Spec("CT", 32, 32, 1, seed=n), tmp_path / f"ct{n}.dcm") for n in range(6)]
    archive, port, log = tmp_path / "archive", free_port(), tmp_path / "listen.log"
    peer_port = free_port()  # nothing listens there yet
    peer = RemoteAE("ORTHANC", "127.0.0.1", peer_port)
    listen = _listen_forwarding(archive, port, peer, log)
    try:
        sent = subprocess.run([str(storescu), "-aec", "TRANSCODE", "127.0.0.1", str(port), *map(str, sources)],
                              capture_output=True, text=True, timeout=120, check=False)
        assert sent.returncode == 0, sent.stderr  # every instance acknowledged
    finally:
        listen.kill()  # SIGKILL: no clean shutdown of the forwarder
        listen.wait(timeout=60)
    with orthanc(tmp_path / "orthanc", config={"DicomPort": peer_port}) as pacs:
        listen = _listen_forwarding(archive, port, peer, log)
        try:
            held = held_once(pacs, len(sources), wait=120)
        finally:
            listen.terminate()
            listen.wait(timeout=60)
    assert_same_pixels(held, {str(pydicom.dcmread(path).SOPInstanceUID): path for path in sources})


@pytest.fixture(autouse=True)
def _quiet_pynetdicom(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("ERROR", logger="pynetdicom")
