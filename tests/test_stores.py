"""The store conformance suite (store_conformance.py) for every backend:
folder, memory and S3 (a real SeaweedFS, tests/seaweed.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import seaweed
from tests.store_conformance import StoreTests
from transcode.stores.base import Store
from transcode.stores.folder import FolderStore
from transcode.stores.memory import MemoryStore


class TestFolderStore(StoreTests):
    @pytest.fixture
    def store(self, tmp_path: Path) -> FolderStore:
        return FolderStore(tmp_path / "store")

    def read_only_twin(self, store: Store) -> Store:
        assert isinstance(store, FolderStore)
        return FolderStore(store.root, read_only=True)

    def test_layout_and_no_temporary_files_left(self, store: FolderStore) -> None:
        store.put("objects/1/2/3.dcm", b"abc")
        store.put("objects/1/2/3.dcm", b"abcd")
        assert (store.root / "objects/1/2/3.dcm").read_bytes() == b"abcd"
        assert [p.name for p in (store.root / "objects/1/2").iterdir()] == ["3.dcm"]

    def test_temporary_files_are_not_listed(self, store: FolderStore) -> None:
        store.put("a/b", b"1")
        (store.root / "a" / ".b.x1y2.partial").write_bytes(b"half")  # what a killed put leaves
        assert list(store.list()) == ["a/b"]


class TestMemoryStore(StoreTests):
    @pytest.fixture
    def store(self) -> MemoryStore:
        return MemoryStore()

    def read_only_twin(self, store: Store) -> Store:
        return MemoryStore(read_only=True)  # a memory store's objects are its own


class TestS3Store(StoreTests):
    @pytest.fixture
    def store(self, s3_server: seaweed.Seaweed) -> Iterator[Store]:
        from transcode.stores.s3 import S3Store

        with S3Store(s3_server.bucket, f"t-{uuid.uuid4().hex[:12]}", env=s3_server.env()) as store:
            yield store

    @pytest.fixture(autouse=True)
    def _server(self, s3_server: seaweed.Seaweed) -> None:
        self.server = s3_server

    def read_only_twin(self, store: Store) -> Store:
        from transcode.stores.s3 import S3Store

        assert isinstance(store, S3Store)
        return S3Store(store.bucket, store.prefix, read_only=True, env=self.server.env())

    def test_from_url_and_environment(self, s3_server: seaweed.Seaweed, monkeypatch: pytest.MonkeyPatch) -> None:
        """The AWS variables alone reach the server, as other S3 tools do."""
        from transcode.stores.s3 import S3Store

        for name, value in s3_server.env().items():
            monkeypatch.setenv(name, value)
        prefix = f"url-{uuid.uuid4().hex[:8]}"
        store = S3Store.from_url(f"s3://{s3_server.bucket}/{prefix}/")
        store.put("x/y", b"hello")
        other = S3Store(s3_server.bucket, env=s3_server.env())
        assert other.get(f"{prefix}/x/y") == b"hello"
        assert list(store.list()) == ["x/y"]
