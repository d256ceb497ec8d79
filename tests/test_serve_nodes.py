"""Two `transcode serve` nodes over one archive, as behind a load
balancer: objects in S3 (a real SeaweedFS), the catalog in PostgreSQL (a
real server), each node with its own staging folder. STOW-RS on one node is
searched, retrieved and rendered on the other, bit-exact and with the same
ETags on both; then the other node takes a STOW of its own (the catalog's
advisory lock passes the write session from one node to the other)."""

from __future__ import annotations

import uuid
from contextlib import ExitStack
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
import requests

from fixtures import generate
from tests.postgres import Postgres
from tests.seaweed import Seaweed
from tests.served import multipart_parts, serve_command
from tests.test_server_stow import CONTENT_TYPE, body

AS_STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def stow(base: str, files: list[Path]) -> requests.Response:
    return requests.post(f"{base}/studies", data=body(*(path.read_bytes() for path in files)),
                         headers={"Content-Type": CONTENT_TYPE, "Accept": "application/dicom+json"}, timeout=120)


def test_stow_on_one_node_is_served_by_the_other(tmp_path: Path, s3_server: Seaweed, postgres: Postgres,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    url = f"s3://{s3_server.bucket}/nodes-{uuid.uuid4().hex[:8]}"
    catalog = postgres.create_database()
    first = generate.write_ct_series(tmp_path / "first", 3, rows=64, columns=64)
    second = generate.write_ct_series(tmp_path / "second", 2, rows=64, columns=64)
    with ExitStack() as nodes:
        a, b = (nodes.enter_context(serve_command(url, "--catalog", catalog, "--work-dir",  # type: ignore[arg-type]
                                                  str(tmp_path / f"staging-{name}"), "--log-level", "warning"))
                for name in ("a", "b"))
        answer = stow(a, first)
        assert answer.status_code == 200, answer.text
        ds = pydicom.dcmread(first[0])
        study, series = ds.StudyInstanceUID, ds.SeriesInstanceUID
        found = requests.get(f"{b}/studies/{study}/series/{series}/instances", timeout=30)
        assert found.status_code == 200 and len(found.json()) == 3
        for path in first:
            source = pydicom.dcmread(path)
            instance = f"/studies/{study}/series/{series}/instances/{source.SOPInstanceUID}"
            frames = [requests.get(f"{base}{instance}/frames/1", headers={"Accept": AS_STORED}, timeout=30)
                      for base in (a, b)]
            assert [f.status_code for f in frames] == [200, 200]
            assert frames[0].headers["ETag"] == frames[1].headers["ETag"]
            [(_, stored)] = multipart_parts(frames[1].headers["content-type"], frames[1].content)
            assert np.array_equal(imagecodecs.htj2k_decode(stored), source.pixel_array)  # bit-exact from node b
            rendered = [requests.get(f"{base}{instance}/rendered", headers={"Accept": "image/png"}, timeout=30)
                        for base in (a, b)]
            assert [r.status_code for r in rendered] == [200, 200]
            assert rendered[0].content == rendered[1].content
            assert rendered[0].headers["ETag"] == rendered[1].headers["ETag"]
        # The other node takes a STOW too, once node a's write session is idle and released.
        assert stow(b, second).status_code == 200
        other = pydicom.dcmread(second[0]).StudyInstanceUID
        assert len(requests.get(f"{a}/studies/{other}/instances", timeout=30).json()) == 2
