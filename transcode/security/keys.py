"""API keys for machines: created once, shown once, stored as a hash.

A key reads `tck_<id>_<secret>`: `id` (12 hex digits) names it in the key
file, the audit trail (`key:<id>`) and `transcode keys revoke`; `secret` is
32 random bytes. The file keeps SHA-256 of the secret, not the secret: a
256-bit random value cannot be guessed from its hash, so a slow salted hash
(scrypt, made for low-entropy passwords) would add tens of milliseconds to
every request and no protection. Comparison is constant-time.

The file (JSON, mode 0600, replaced atomically) is read again whenever it
changes on disk, so a key revoked by the command is refused by a running
server from its next request on.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

PREFIX = "tck_"
SCOPES = ("read", "write", "admin")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One key as stored: never its secret."""

    id: str
    name: str
    scopes: tuple[str, ...]
    created: str
    digest: str
    revoked: str | None = None


class UnknownKey(Exception):
    """The presented key is not one of the file's (or not a key at all)."""


class KeyFile:
    """The keys in `path` (a missing file holds none)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._seen: tuple[int, int, int] | None = None
        self._keys: dict[str, ApiKey] = {}

    def all(self) -> list[ApiKey]:
        """Every key, revoked ones included, as the file holds them now."""
        self._reload()
        return list(self._keys.values())

    def create(self, name: str, scopes: tuple[str, ...]) -> tuple[ApiKey, str]:
        """A new key with `scopes`; returns it and the key text, which is
        not stored anywhere: the caller shows it once."""
        unknown = set(scopes) - set(SCOPES)
        if unknown or not scopes:
            raise ValueError(f"scopes are {', '.join(SCOPES)}, not {', '.join(sorted(unknown)) or 'none'}")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        key = ApiKey(key_id, name, tuple(scopes), _now(), _hash(secret))
        with self._locked():
            self._write([*self.all(), key])
        return key, f"{PREFIX}{key_id}_{secret}"

    def revoke(self, key_id: str) -> ApiKey:
        """Mark `key_id` revoked (kept in the file, so the trail's `key:<id>` stays explained)."""
        with self._locked():
            keys = self.all()
            found = [k for k in keys if k.id == key_id]
            if not found:
                raise UnknownKey(f"no key {key_id!r} in {self.path}")
            revoked = replace(found[0], revoked=found[0].revoked or _now())
            self._write([revoked if k.id == key_id else k for k in keys])
        return revoked

    def find(self, text: str) -> ApiKey:
        """The key whose text is `text` (revoked or not); UnknownKey otherwise."""
        key_id, _, secret = text.removeprefix(PREFIX).partition("_")
        self._reload()
        key = self._keys.get(key_id)
        if not text.startswith(PREFIX) or key is None or not hmac.compare_digest(key.digest, _hash(secret)):
            raise UnknownKey("not a valid API key")
        return key

    def _reload(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._seen, self._keys = None, {}
            return
        if self._seen != (st.st_ino, st.st_mtime_ns, st.st_size):
            data = json.loads(self.path.read_text())
            self._keys = {k["id"]: ApiKey(**{**k, "scopes": tuple(k["scopes"])}) for k in data["keys"]}
            self._seen = (st.st_ino, st.st_mtime_ns, st.st_size)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise changes by several commands (a lock file beside the key file)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _write(self, keys: list[ApiKey]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".keys-")  # mode 0600
        with os.fdopen(fd, "w") as f:
            json.dump({"keys": [asdict(k) for k in keys]}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
