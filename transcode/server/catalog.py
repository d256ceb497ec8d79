"""The server's read side of the archive index.

Each server thread has its own read-only SQLite connection: WAL lets them
read while an ingest (a STOW-RS request, or `transcode ingest` in another
process) writes, and every query sees the last committed state.
"""

from __future__ import annotations

import dataclasses
import functools
import sqlite3
import threading
from pathlib import Path

from transcode.archive.index import InstanceRow, read_uri
from transcode.archive.layout import InvalidUID, check_uid
from transcode.server.errors import Problem
from transcode.server.frames import StoredInstance

_COLUMNS = ", ".join(InstanceRow.__slots__)
# Instances in the order viewers expect: by Instance Number, then arrival.
_ORDER = "CAST(json_extract(dicom_json, '$.\"00200013\".Value[0]') AS INTEGER), rowid"


def uid(value: str, what: str) -> str:
    """A UID from a URL path, or 400."""
    try:
        return check_uid(value, what)
    except InvalidUID as exc:
        raise Problem(400, "invalid_uid", str(exc)) from None


class Catalog:
    """Lookups the server needs, answering 404 for what is not there."""

    def __init__(self, index_path: Path) -> None:
        self.path = index_path
        self._local = threading.local()
        # Archived instances never change (a conflicting copy goes elsewhere), so
        # lookups are cached; misses (404) are not, so new arrivals are seen.
        # An entry holds a frame index per frame (~70 kB for a 69-frame DBT).
        self.instance = functools.lru_cache(maxsize=1024)(self._instance)  # type: ignore[method-assign]

    @property
    def db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(read_uri(self.path), uri=True, check_same_thread=False)
            db.execute("PRAGMA query_only=ON")
            self._local.db = db
        return db

    @functools.cached_property
    def _frame_digest(self) -> str:
        """`f.digest`, or NULL in an index from before frame digests left
        without the column (read-only): those frames' objects are proved whole."""
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(frames)")}
        return "f.digest" if "digest" in columns else "NULL"

    def _instance(self, study: str, series: str, sop: str) -> StoredInstance:
        study, series, sop = uid(study, "Study Instance UID"), uid(series, "Series Instance UID"), \
            uid(sop, "SOP Instance UID")
        rows = self.db.execute(
            f"SELECT {_COLUMNS}, f.number, f.offset, f.length, f.codestream, {self._frame_digest} FROM instances"
            " LEFT JOIN frames f USING (sop_uid) WHERE sop_uid = ? AND series_uid = ? AND study_uid = ?"
            " ORDER BY f.number",
            (sop, series, study),
        ).fetchall()
        if not rows:
            raise Problem(404, "not_found", f"no instance {sop} in series {series} of study {study}")
        width = len(InstanceRow.__slots__)
        frames = [row[width:] for row in rows if row[width] is not None]
        return StoredInstance.from_rows(InstanceRow(*rows[0][:width]), frames)

    def row(self, study: str, series: str, sop: str) -> InstanceRow:
        """The instance's index row with its DICOM JSON (not cached)."""
        row = self.instance(study, series, sop).row
        text = self.db.execute("SELECT dicom_json FROM instances WHERE sop_uid = ?", (row.sop_uid,)).fetchone()[0]
        return dataclasses.replace(row, dicom_json=text)

    def instances(self, study: str, series: str | None = None) -> list[InstanceRow]:
        """Every instance of a study or series, or 404."""
        study = uid(study, "Study Instance UID")
        if series is None:
            rows = self.db.execute(
                f"SELECT {_COLUMNS} FROM instances WHERE study_uid = ? ORDER BY series_uid, {_ORDER}", (study,)
            ).fetchall()
            where = f"study {study}"
        else:
            series = uid(series, "Series Instance UID")
            rows = self.db.execute(
                f"SELECT {_COLUMNS} FROM instances WHERE study_uid = ? AND series_uid = ? ORDER BY {_ORDER}",
                (study, series),
            ).fetchall()
            where = f"series {series} of study {study}"
        if not rows:
            raise Problem(404, "not_found", f"no instances in {where}")
        return [InstanceRow(*row) for row in rows]

