"""The server's lookups over the archive's catalog: UIDs from a URL checked
(400), what is not there answered 404, archived instances cached."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict

from transcode.archive.layout import InvalidUID, check_uid
from transcode.catalog.base import Catalog, InstanceRow
from transcode.server.errors import Problem
from transcode.server.frames import StoredInstance


def uid(value: str, what: str) -> str:
    """A UID from a URL path, or 400."""
    try:
        return check_uid(value, what)
    except InvalidUID as exc:
        raise Problem(400, "invalid_uid", str(exc)) from None


#: Archived instances cached (an entry holds a frame index per frame: ~70 kB for a 69-frame DBT).
INSTANCES = 1024
#: How long a cached instance is served as it is before the catalog is asked
#: whether its row is still the same (one indexed query per instance, at most
#: once per this many seconds).
FRESH_SECONDS = 2.0


class Lookup:
    """Lookups the server needs, answering 404 for what is not there.

    Instances are cached, misses (404) not, so new arrivals are seen. A
    cached instance can change: a re-send with `--on-conflict replace` (an
    ingest, STOW-RS or `listen` in this process or another) puts another
    object, with other frame offsets and digests, under the same path. So an
    entry older than `FRESH_SECONDS` is checked against the catalog's row
    (its path and object digest) before it is used again, and read afresh
    where it changed: without that, a server kept answering the replaced
    instance from its old frame map, which the new bytes fail
    (`integrity_error` for an intact object) until it was restarted."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._instances: OrderedDict[tuple[str, str, str], tuple[StoredInstance, float]] = OrderedDict()
        self._lock = threading.Lock()

    def instance(self, study: str, series: str, sop: str) -> StoredInstance:
        """The archived instance (its row and frames rows), or 404."""
        key, now = (study, series, sop), time.monotonic()
        with self._lock:
            cached = self._instances.get(key)
            if cached is not None:
                self._instances.move_to_end(key)  # least recently used out first, as before
        if cached is not None:
            stored, checked = cached
            if now - checked < FRESH_SECONDS:
                return stored
            if self._unchanged(stored.row):
                self._keep(key, stored, now)
                return stored
        stored = self._instance(study, series, sop)
        self._keep(key, stored, now)
        return stored

    def _unchanged(self, row: InstanceRow) -> bool:
        return self.catalog.object_version(row.sop_uid) == (row.path, row.object_digest)

    def _keep(self, key: tuple[str, str, str], stored: StoredInstance, checked: float) -> None:
        with self._lock:
            self._instances[key] = (stored, checked)
            self._instances.move_to_end(key)
            while len(self._instances) > INSTANCES:
                self._instances.popitem(last=False)

    def _instance(self, study: str, series: str, sop: str) -> StoredInstance:
        study, series, sop = uid(study, "Study Instance UID"), uid(series, "Series Instance UID"), \
            uid(sop, "SOP Instance UID")
        found = self.catalog.stored(study, series, sop)
        if found is None:
            raise Problem(404, "not_found", f"no instance {sop} in series {series} of study {study}")
        return StoredInstance.from_rows(*found)

    def row(self, study: str, series: str, sop: str) -> InstanceRow:
        """The instance's catalog row with its DICOM JSON (not cached)."""
        row = self.instance(study, series, sop).row
        return dataclasses.replace(row, dicom_json=self.catalog.dicom_json(row.sop_uid))

    def instances(self, study: str, series: str | None = None) -> list[InstanceRow]:
        """Every instance of a study or series (in viewer order), or 404."""
        study = uid(study, "Study Instance UID")
        if series is not None:
            series = uid(series, "Series Instance UID")
        rows = self.catalog.members(study, series)
        if not rows:
            where = f"study {study}" if series is None else f"series {series} of study {study}"
            raise Problem(404, "not_found", f"no instances in {where}")
        return rows
