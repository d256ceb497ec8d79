"""Objects in an S3-compatible bucket, through obstore (the Rust
`object_store` crate: Apache-2.0/MIT), chosen over fsspec/s3fs by
`benchmarks/s3_ranged_reads.py` (README, "Object storage (S3)").

What the library gives and this module does not re-implement: signing,
connection pooling, retries with backoff, multipart upload for large files
(a `Path` larger than one 5 MiB part), ranged GETs with nearby ranges
coalesced into one request, and configuration from the standard AWS
environment variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, ...), as the AWS CLI reads them.
An `http://` endpoint (a local SeaweedFS or MinIO) is allowed because the
user named it.

S3 makes a PUT, multipart or not, visible whole or not at all, so `put`
is atomic without a temporary object; it is durable when the server
acknowledged it. S3 answers a range that runs past the end with the bytes
there are; the store checks lengths and raises ObjectTruncated instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import BaseError
from obstore.store import S3Store as _Bucket

from transcode.stores.base import (
    ByteRange,
    ObjectMissing,
    ObjectTruncated,
    Store,
    StoreUnavailable,
    check_key,
    check_prefix,
)

log = logging.getLogger(__name__)


class S3Store(Store):
    """Objects under `prefix` in `bucket`; endpoint and credentials from
    `env` (default: the process environment)."""

    remote = True

    def __init__(self, bucket: str, prefix: str = "", *, read_only: bool = False,
                 env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.supports_writes = not read_only
        config: dict[str, Any] = {key: env[name] for key, name in _ENV.items() if env.get(name)}
        endpoint = config.get("endpoint", "")
        self._bucket = _Bucket(bucket, prefix=self.prefix or None, config=config,  # type: ignore[arg-type]
                               client_options={"allow_http": endpoint.startswith("http://")})

    @classmethod
    def from_url(cls, url: str, *, read_only: bool = False, env: Mapping[str, str] | None = None) -> S3Store:
        """`s3://BUCKET` or `s3://BUCKET/PREFIX`."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"{url}: expected s3://bucket/prefix")
        return cls(parts.netloc, parts.path, read_only=read_only, env=env)

    def __repr__(self) -> str:
        return f"S3Store('s3://{self.bucket}/{self.prefix}')"

    def get(self, key: str) -> bytes:
        try:
            return bytes(obstore.get(self._bucket, check_key(key)).bytes())
        except (BaseError, FileNotFoundError, OSError) as exc:
            raise self._error(key, exc) from None

    def get_range(self, key: str, byte_range: ByteRange) -> bytes:
        """One GET (a frame: the server's hot path), without `get_ranges`'
        planning of parallel and merged requests."""
        if byte_range.start == byte_range.end:
            return self.get_ranges(key, [byte_range])[0]
        try:
            data = obstore.get_range(self._bucket, check_key(key), start=byte_range.start, end=byte_range.end)
        except (BaseError, OSError, ValueError) as exc:
            raise self._error(key, exc, byte_range.end) from None
        if len(data) != byte_range.end - byte_range.start:
            raise ObjectTruncated(f"{key} ends before byte {byte_range.end}")
        return bytes(data)

    def get_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[bytes]:
        """One call; obstore fetches in parallel and merges ranges less than
        1 MiB apart into one GET. Empty ranges are answered here (HTTP has
        no empty range), after a HEAD where one starts past byte 0."""
        check_key(key)
        wanted = [r for r in ranges if r.end > r.start]
        try:
            got = obstore.get_ranges(self._bucket, key, starts=[r.start for r in wanted],
                                     ends=[r.end for r in wanted]) if wanted else []
        except BaseException as exc:
            # obstore 0.12 panics (a pyo3 PanicException, not an Exception) where a range
            # merged with others starts past the end of the object
            if not isinstance(exc, (BaseError, OSError, ValueError)) and type(exc).__name__ != "PanicException":
                raise
            raise self._error(key, exc, max(r.end for r in wanted)) from None
        if any(r.start > 0 and r.start == r.end for r in ranges):
            size = self.size(key)
            if any(r.start > size for r in ranges):
                raise ObjectTruncated(f"{key} has {size} bytes, fewer than a range asks for")
        found = iter(got)
        out = []
        for r in ranges:
            data = bytes(next(found)) if r.end > r.start else b""
            if len(data) != r.end - r.start:
                raise ObjectTruncated(f"{key} ends before byte {r.end}")
            out.append(data)
        return out

    def put(self, key: str, source: Path | bytes) -> None:
        self.check_writable()
        try:
            obstore.put(self._bucket, check_key(key), source)
        except (BaseError, OSError) as exc:
            raise StoreUnavailable(f"{self!r}: storing {key} failed ({_why(exc)})") from None

    def rename(self, source: str, key: str) -> None:
        """A server-side copy (CopyObject: the copy appears whole or not at
        all, as a put does), then a delete of `source`."""
        self.check_writable()
        try:
            obstore.rename(self._bucket, check_key(source), check_key(key))
        except (BaseError, FileNotFoundError, OSError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise ObjectMissing(f"{source} is not stored") from None
            raise StoreUnavailable(f"{self!r}: moving {source} to {key} failed ({_why(exc)})") from None

    def delete(self, key: str) -> None:
        self.check_writable()
        try:
            obstore.delete(self._bucket, check_key(key))
        except FileNotFoundError:
            return
        except (BaseError, OSError) as exc:
            raise StoreUnavailable(f"{self!r}: deleting {key} failed ({_why(exc)})") from None

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectMissing:
            return False
        return True

    def size(self, key: str) -> int:
        try:
            return int(obstore.head(self._bucket, check_key(key))["size"])
        except (BaseError, FileNotFoundError, OSError) as exc:
            raise self._error(key, exc) from None

    def list(self, prefix: str = "") -> Iterator[str]:
        """obstore lists by whole path segments: ask for the folder part of
        `prefix` and keep the keys that start with all of it."""
        folder = check_prefix(prefix).rpartition("/")[0]
        try:
            for batch in obstore.list(self._bucket, folder or None, chunk_size=1000):
                for meta in batch:
                    if meta["path"].startswith(prefix):
                        yield meta["path"]
        except (BaseError, OSError) as exc:
            raise StoreUnavailable(f"{self!r}: listing {prefix!r} failed ({_why(exc)})") from None

    def _error(self, key: str, exc: BaseException, end: int | None = None) -> Exception:
        """The Store error for a failed read: missing, truncated (a range the
        server refused, past the end) or unavailable."""
        if isinstance(exc, FileNotFoundError):
            return ObjectMissing(f"{key} is not stored")
        if end is not None:
            try:
                size = self.size(key)
            except ObjectMissing as missing:
                return missing
            if size < end:
                return ObjectTruncated(f"{key} has {size} bytes, not {end}")
        log.warning("%r: reading %s failed: %s", self, key, _why(exc))
        return StoreUnavailable(f"{self!r}: reading {key} failed ({_why(exc)})")


#: obstore's S3 configuration keys and the AWS environment variables for them.
_ENV = {"endpoint": "AWS_ENDPOINT_URL", "access_key_id": "AWS_ACCESS_KEY_ID",
        "secret_access_key": "AWS_SECRET_ACCESS_KEY", "region": "AWS_REGION", "session_token": "AWS_SESSION_TOKEN"}


def _why(exc: BaseException) -> str:
    """The first line of a library error (obstore's carry a debug dump)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
