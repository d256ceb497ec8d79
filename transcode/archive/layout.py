"""Where objects live in an archive folder, and the UID rule that guards it.

    ROOT/objects/STUDY/SERIES/SOP.dcm            the archived instance
    ROOT/conflicts/SOP/DIGEST.dcm                 same SOP UID, other content
    ROOT/staging/                                 workers' output before it is placed
    ROOT/index.sqlite                             the index (index.py)
    ROOT/archive.json                             which archive this is (identity.py)

UIDs become path components only after `check_uid`: digits and dots, no
empty component, at most 64 characters. Nothing else can produce a slash,
a dot-dot or an absolute path. A component with a leading zero
("...19940822.083000", which PS3.5 9.1 forbids) is accepted: legacy
devices wrote such UIDs, dcmtk and pydicom read them (with a warning),
and refusing them would drop readable instances from a migration.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


class InvalidUID(ValueError):
    """A UID that may not become part of a path."""


def check_uid(value: object, what: str = "UID") -> str:
    """Return `value` as a UID string, or raise InvalidUID saying why."""
    uid = str(value or "").strip().rstrip("\x00")
    if not uid:
        raise InvalidUID(f"{what} is missing")
    if len(uid) > 64:
        raise InvalidUID(f"{what} is {len(uid)} characters long (at most 64)")
    if not _UID.fullmatch(uid):
        raise InvalidUID(f"{what} {uid[:70]!r} is not digits and dots")
    return uid


def object_path(study: str, series: str, sop: str) -> str:
    """Archive-relative path of an instance (UIDs already checked)."""
    return f"objects/{study}/{series}/{sop}.dcm"


def conflict_path(sop: str, digest: str) -> str:
    """Archive-relative path of a conflicting copy, named by its content."""
    return f"conflicts/{sop}/{digest.split(':')[-1][:32]}.dcm"


class Layout:
    """Paths inside one archive folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._real_root = os.path.realpath(root)
        self.objects = root / "objects"
        self.conflicts = root / "conflicts"
        self.staging = root / "staging"
        self.index = root / "index.sqlite"
        self.marker = root / "archive.json"
        self.lock = root / ".lock"

    def create(self) -> None:
        for folder in (self.objects, self.conflicts, self.staging):
            folder.mkdir(parents=True, exist_ok=True)

    def stored(self, folder: Path) -> list[Path]:
        """The files under `folder` (`objects` or `conflicts`), sorted;
        none when it does not exist."""
        return sorted(path for path in folder.rglob("*") if path.is_file())

    def relative(self, path: Path) -> str:
        """The archive-relative name of `path`, a path under one that
        `resolve` gave (absolute, however the root was spelled)."""
        return os.path.relpath(path, self._real_root)

    def resolve(self, relative: str | Path) -> Path:
        """The absolute path of an archive-relative one, never outside the
        root. Lexical (no symlinks are followed: the archive makes none), as
        it runs for every object the server reads."""
        path = os.path.normpath(os.path.join(self._real_root, relative))
        if not path.startswith(self._real_root + os.sep):
            raise InvalidUID(f"{relative} points outside the archive")
        return Path(path)
