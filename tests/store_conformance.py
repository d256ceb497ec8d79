"""What every `Store` backend must do: one suite, run for each backend by
`tests/test_stores.py` (after zarr-python's `zarr/testing/store.py`).

A subclass provides the `store` fixture: an empty, writable store of its
backend. Data is random, so no test passes on a backend that returns the
wrong bytes."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from transcode.stores.base import ByteRange, InvalidKey, ObjectMissing, ObjectTruncated, Store, StoreError


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


class StoreTests:
    """Subclass and provide a `store` fixture (an empty, writable store)."""

    #: The large-object test's size: above every backend's multipart threshold.
    large = 20 * 1024 * 1024

    def test_put_get_bytes_and_file(self, store: Store, tmp_path: Path) -> None:
        data = payload(1000, 1)
        store.put("objects/1.2/3.4/5.6.dcm", data)
        source = tmp_path / "source.bin"
        source.write_bytes(payload(777, 2))
        store.put("objects/1.2/3.4/7.8.dcm", source)
        assert store.get("objects/1.2/3.4/5.6.dcm") == data
        assert store.get("objects/1.2/3.4/7.8.dcm") == source.read_bytes()
        assert source.is_file()  # a put reads its source, never consumes it
        assert store.size("objects/1.2/3.4/5.6.dcm") == 1000
        assert store.exists("objects/1.2/3.4/7.8.dcm")

    def test_empty_object(self, store: Store) -> None:
        store.put("empty", b"")
        assert store.get("empty") == b""
        assert store.size("empty") == 0
        assert store.get_ranges("empty", [ByteRange(0, 0)]) == [b""]

    def test_replace(self, store: Store) -> None:
        store.put("k", payload(500, 3))
        store.put("k", payload(300, 4))
        assert store.get("k") == payload(300, 4)
        assert store.size("k") == 300

    def test_missing(self, store: Store) -> None:
        assert not store.exists("nothing/here")
        for call in (lambda: store.get("nothing/here"), lambda: store.size("nothing/here"),
                     lambda: store.get_range("nothing/here", ByteRange(0, 1)),
                     lambda: store.get_ranges("nothing/here", [ByteRange(0, 1), ByteRange(2, 3)])):
            with pytest.raises(ObjectMissing):
                call()
        with pytest.raises(FileNotFoundError):  # what archive reads raised before stores
            store.get("nothing/here")
        store.delete("nothing/here")  # deleting what is not there is not an error

    def test_range_edges(self, store: Store) -> None:
        data = payload(4096, 5)
        store.put("r", data)
        for start, end in [(0, 1), (0, 4096), (4095, 4096), (17, 2049), (1000, 1000), (4096, 4096)]:
            assert store.get_range("r", ByteRange(start, end)) == data[start:end], (start, end)

    @pytest.mark.parametrize(("start", "end"), [(4000, 4097), (4096, 5000), (5000, 5001), (5000, 5000)])
    def test_range_past_the_end_is_truncated(self, store: Store, start: int, end: int) -> None:
        store.put("r", payload(4096, 6))
        with pytest.raises(ObjectTruncated):
            store.get_range("r", ByteRange(start, end))
        with pytest.raises(EOFError):  # what integrity.py maps to object_truncated
            store.get_ranges("r", [ByteRange(0, 10), ByteRange(start, end)])

    def test_invalid_ranges_and_keys(self, store: Store) -> None:
        with pytest.raises(ValueError):
            ByteRange(5, 4)
        with pytest.raises(ValueError):
            ByteRange(-1, 4)
        for key in ("", "/abs", "a//b", "a/../b", "..", "a/./b", "trailing/"):
            with pytest.raises(InvalidKey):
                store.put(key, b"x")
            with pytest.raises(InvalidKey):
                store.get(key)

    def test_several_ranges_in_one_call(self, store: Store) -> None:
        data = payload(100_000, 7)
        store.put("multi", data)
        ranges = [ByteRange(90_000, 100_000), ByteRange(0, 10), ByteRange(5, 50_000), ByteRange(5, 50_000),
                  ByteRange(60_000, 60_000), ByteRange(12_345, 12_346)]
        assert store.get_ranges("multi", ranges) == [data[r.start:r.end] for r in ranges]
        assert store.get_ranges("multi", []) == []

    def test_list_by_prefix(self, store: Store) -> None:
        keys = {"objects/1/2/3.dcm", "objects/1/2/4.dcm", "objects/1/5/6.dcm", "objects/12/1/1.dcm",
                "conflicts/3/abc.dcm", "archive.json"}
        for i, key in enumerate(sorted(keys)):
            store.put(key, payload(10, i))
        assert set(store.list()) == keys
        assert set(store.list("objects/")) == {k for k in keys if k.startswith("objects/")}
        assert set(store.list("objects/1/")) == {"objects/1/2/3.dcm", "objects/1/2/4.dcm", "objects/1/5/6.dcm"}
        assert set(store.list("objects/1")) == {k for k in keys if k.startswith("objects/1")}
        assert set(store.list("objects/1/2/3")) == {"objects/1/2/3.dcm"}
        assert set(store.list("nothing/")) == set()

    def test_delete(self, store: Store) -> None:
        store.put("a/b", b"1")
        store.put("a/c", b"2")
        store.delete("a/b")
        assert not store.exists("a/b")
        assert set(store.list("a/")) == {"a/c"}
        with pytest.raises(ObjectMissing):
            store.get("a/b")

    def test_rename(self, store: Store) -> None:
        """The object moves whole, replacing what was at the key; the
        source is gone; a missing source raises ObjectMissing."""
        store.put("staging/x", b"new" * 1000)
        store.put("objects/x", b"old")
        store.rename("staging/x", "objects/x")
        assert store.get("objects/x") == b"new" * 1000
        assert not store.exists("staging/x")
        with pytest.raises(ObjectMissing):
            store.rename("staging/x", "objects/y")
        assert not store.exists("objects/y")

    def test_large_object(self, store: Store, tmp_path: Path) -> None:
        """Through each backend's large-object path (S3: multipart upload)."""
        source = tmp_path / "large.bin"
        data = payload(self.large + 12345, 8)
        source.write_bytes(data)
        store.put("large", source)
        assert store.size("large") == len(data)
        middle = ByteRange(self.large // 2 - 7, self.large // 2 + 1_000_003)
        tail = ByteRange(len(data) - 100, len(data))
        assert store.get_ranges("large", [middle, tail]) == [data[middle.start:middle.end], data[tail.start:]]
        assert store.get("large") == data

    def test_readers_never_see_a_mix(self, store: Store) -> None:
        """A writer replaces an object while readers read it whole and in
        ranges: each read is all old or all new, never a part of each."""
        size = 1 << 20
        versions = [bytes([value]) * size for value in (0xAA, 0xBB, 0xCC)]
        store.put("hot", versions[0])
        stop = threading.Event()
        seen: list[set[int]] = []
        errors: list[BaseException] = []

        def read() -> None:
            try:
                while not stop.is_set():
                    seen.append(set(store.get("hot")))
                    seen.append(set(store.get_range("hot", ByteRange(1000, size - 1000))))
            except (StoreError, OSError) as exc:  # reported below
                errors.append(exc)

        readers = [threading.Thread(target=read) for _ in range(3)]
        for thread in readers:
            thread.start()
        for round_ in range(15):
            store.put("hot", versions[round_ % 3])
        stop.set()
        for thread in readers:
            thread.join()
        assert not errors
        assert seen and all(len(values) == 1 for values in seen)

    def read_only_twin(self, store: Store) -> Store:
        """The same backend opened read-only, over `store`'s objects where
        the backend has any outside the process."""
        raise NotImplementedError

    def test_read_only(self, store: Store) -> None:
        store.put("kept", b"1")
        twin = self.read_only_twin(store)
        assert not twin.supports_writes
        with pytest.raises(PermissionError):
            twin.put("kept", b"2")
        with pytest.raises(PermissionError):
            twin.delete("kept")
        assert store.get("kept") == b"1"
        if twin.exists("kept"):
            assert twin.get("kept") == b"1"
