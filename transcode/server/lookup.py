"""The server's lookups over the archive's catalog: UIDs from a URL checked
(400), what is not there answered 404, archived instances cached."""

from __future__ import annotations

import dataclasses
import functools

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


class Lookup:
    """Lookups the server needs, answering 404 for what is not there."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        # Archived instances never change (a conflicting copy goes elsewhere), so
        # lookups are cached; misses (404) are not, so new arrivals are seen.
        # An entry holds a frame index per frame (~70 kB for a 69-frame DBT).
        self.instance = functools.lru_cache(maxsize=1024)(self._instance)  # type: ignore[method-assign]

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
