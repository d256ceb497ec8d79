"""Real DICOM peers started by the tests: Orthanc (Debian's `orthanc`, with
`orthanc-python` for plugins) and dcmtk's `dcmqrscp` (Debian's `dcmtk`), a
query/retrieve SCP of another lineage. Tests that need one skip where it is
absent; `.ci/run` installs them. Loopback addresses only."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ORTHANC = shutil.which("Orthanc")
DCMQRSCP, DCMSEND, ECHOSCU = shutil.which("dcmqrscp"), shutil.which("dcmsend"), shutil.which("echoscu")
PYTHON_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPython.so")
#: Orthanc's own DCMTK has no JPEG 2000 encoder: "IngestTranscoding" to J2K
#: needs the GDCM plugin (Debian `orthanc-gdcm`).
GDCM_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancGdcm.so")


def free_port() -> int:
    """A TCP port free on loopback now (the peer binds it right after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Orthanc:
    """A running Orthanc: its REST root, DICOM port and AE title."""

    url: str
    dicom_port: int
    aet: str
    log: Path

    def get(self, path: str) -> Any:
        return json.loads(self.read(path, timeout=30))

    def post(self, path: str, body: bytes, content_type: str = "application/dicom") -> Any:
        request = urllib.request.Request(f"{self.url}{path}", data=body, headers={"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)

    def delete(self, path: str) -> None:
        with urllib.request.urlopen(urllib.request.Request(f"{self.url}{path}", method="DELETE"), timeout=30):
            pass

    def read(self, path: str, timeout: float = 60) -> bytes:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=timeout) as response:
            return response.read()


@contextmanager
def orthanc(folder: Path, *, modalities: dict[str, list[Any]] | None = None, python_script: Path | None = None,
            aet: str = "ORTHANC", config: dict[str, Any] | None = None) -> Iterator[Orthanc]:
    """Start Orthanc with its storage under `folder`; `modalities` are the
    peers it may send to (name -> [AET, host, port]), `python_script` a
    script for its Python plugin. Skips the test where Orthanc (or the
    plugin, when a script is given) is not installed; stops it afterwards."""
    if ORTHANC is None:
        pytest.skip("Orthanc is not installed (Debian package orthanc)")
    if python_script is not None and not PYTHON_PLUGIN.exists():
        pytest.skip("Orthanc's Python plugin is not installed (Debian package orthanc-python)")
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    settings: dict[str, Any] = {
        "Name": "transcode-test", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": aet, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "HttpServerEnabled": True, "DicomServerEnabled": True,
        "DicomModalities": modalities or {}, "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowStore": True,
        "DicomCheckModalityHost": False, "Plugins": [], "StableAge": 1, "ConcurrentJobs": 2,
    }
    if python_script is not None:
        settings["Plugins"] = [str(PYTHON_PLUGIN)]
        settings["PythonScript"] = str(python_script)
    settings.update(config or {})
    path = folder / "orthanc.json"
    path.write_text(json.dumps(settings))
    log = folder / "orthanc.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([ORTHANC, str(path)], stdout=out, stderr=subprocess.STDOUT)
    peer = Orthanc(f"http://127.0.0.1:{http_port}", dicom_port, aet, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                peer.get("/system")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not start: {log.read_text(errors='replace')[-2000:]}") from None
                time.sleep(0.1)
        yield peer
    finally:
        stop(process)


@dataclass(frozen=True)
class QueryRetrieveSCP:
    """A running dcmqrscp: its DICOM port and AE title."""

    port: int
    aet: str
    log: Path

    def store(self, files: list[Path]) -> None:
        """C-STORE `files` into it with dcmtk's `dcmsend` (it keeps what it
        is sent uncompressed, as dcmqrscp accepts by default)."""
        subprocess.run([DCMSEND, "-aec", self.aet, "--decompress-lossless", "127.0.0.1", str(self.port),
                        *map(str, files)], check=True, capture_output=True, timeout=120)


@contextmanager
def dcmqrscp(folder: Path, *, move_to: tuple[str, int] | None = None,
             aet: str = "DCMQR") -> Iterator[QueryRetrieveSCP]:
    """Start dcmtk's dcmqrscp with its database under `folder`; `move_to`
    is the one C-MOVE destination it knows (AE title, port on loopback).
    Skips the test where dcmtk is not installed; stops it afterwards."""
    if DCMQRSCP is None or DCMSEND is None or ECHOSCU is None:
        pytest.skip("dcmtk is not installed (Debian package dcmtk)")
    (folder / "db").mkdir(parents=True, exist_ok=True)
    port = free_port()
    hosts = f"destination = ({move_to[0]}, 127.0.0.1, {move_to[1]})" if move_to else ""
    config = folder / "dcmqrscp.cfg"
    config.write_text(f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
                      f"HostTable BEGIN\n{hosts}\nHostTable END\nVendorTable BEGIN\nVendorTable END\n"
                      f"AETable BEGIN\n{aet} {folder / 'db'} RW (200, 1024mb) ANY\nAETable END\n")
    log = folder / "dcmqrscp.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([DCMQRSCP, "-c", str(config)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        # a C-ECHO, not a bare connection, which dcmqrscp logs as an error
        while subprocess.run([ECHOSCU, "-aec", aet, "127.0.0.1", str(port)], capture_output=True, check=False,
                             timeout=30).returncode:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dcmqrscp did not start: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        yield QueryRetrieveSCP(port, aet, log)
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Terminate a peer started by a test; kill it if it lingers."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
