"""Content digests: BLAKE3, written as "blake3:<64 hex digits>".

Every transcoded byte is hashed twice (the source pixels, the stored object),
so the hash is on the hot path. BLAKE3 is a 256-bit cryptographic hash that
runs at 7.8 GB/s on one core here against 1.9 GB/s for SHA-256 (with SHA-NI):
with SHA-256 the digests alone took the 40-frame benchmark from 0.58x to
0.68x of the bare codec time. The prefix keeps stored digests self-describing
should the algorithm ever change; `b3sum` checks a stored file by hand.
Each stored frame codestream has its own digest too, which the server checks
on every read (computed in one call, `digest_of`).
"""

from __future__ import annotations

from pathlib import Path

from blake3 import blake3

ALGORITHM = "blake3"


class Digest:
    """An incremental digest of bytes fed in order."""

    def __init__(self) -> None:
        self._hash = blake3()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed any C-contiguous buffer (an ndarray's `.data` included)."""
        self._hash.update(memoryview(data).cast("B"))  # releases the GIL for large buffers

    def hexdigest(self) -> str:
        return f"{ALGORITHM}:{self._hash.hexdigest()}"


def digest_of(data: bytes | bytearray | memoryview) -> str:
    """The digest of one buffer (a frame's codestream), in the same format."""
    return f"{ALGORITHM}:{blake3(data).hexdigest()}"


def file_digest(path: Path) -> str:
    """The digest of a whole file, read in 1 MiB chunks."""
    digest = Digest()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
