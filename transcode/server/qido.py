"""QIDO-RS (PS3.18 10.6) over the archive index, in SQL.

Each query key becomes one SQL condition on the table that holds the
attribute: the studies and series rows hold the attributes in STUDY_TAGS and
SERIES_TAGS, the instances rows hold every attribute. A key held below the
level searched becomes an EXISTS over the lower table (a study matches
Modality=CT when one of its series does). Matching follows PS3.4 C.2.2.2:
single value, `*` and `?` wildcards, UID lists, date and time ranges, empty
value = return without matching. Person names match case-insensitively
(what users typing a name into OHIF expect).

Results are in the order instances arrived. Without `limit` at most
`MAX_RESULTS` come back, with a Warning header saying more exist.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

from transcode.archive.index import SERIES_TAGS, STUDY_TAGS
from transcode.server.params import whole

MAX_RESULTS = 1000
CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}
MODALITIES_IN_STUDY = "00080061"
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"


class QueryError(ValueError):
    """A query the server cannot answer as asked (HTTP 400)."""


@dataclass(frozen=True)
class _Table:
    name: str
    alias: str
    uid: dict[str, str]  # UID tag -> column


_TABLES = {
    "study": _Table("studies", "st", {STUDY_UID: "study_uid"}),
    "series": _Table("series", "se", {STUDY_UID: "study_uid", SERIES_UID: "series_uid"}),
    "instance": _Table("instances", "i", {STUDY_UID: "study_uid", SERIES_UID: "series_uid", SOP_UID: "sop_uid"}),
}
_DEPTH = {"study": 0, "series": 1, "instance": 2}

# Attributes returned for each instance unless includefield asks for more (PS3.18 Table 10.6.3-5).
INSTANCE_DEFAULT = ("00080016", "00080018", "00080056", "00200013", "00280010", "00280011", "00280100",
                    "00280008", "00080060", "0020000D", "0020000E")


def _tag(key: str) -> str:
    """A query key (keyword or 8 hex digits) as 8 upper-case hex digits."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
        return key.upper()
    tag = tag_for_keyword(key)
    if tag is None:
        raise QueryError(f"unknown attribute {key!r} (a DICOM keyword or 8 hex digits)")
    return f"{tag:08X}"


def _vr(tag: str) -> str:
    try:
        return dictionary_VR(int(tag, 16))
    except KeyError:
        return "UN"


def _home(tag: str) -> str:
    """The level whose rows hold `tag` (and its UID column, if it is one)."""
    if tag in STUDY_TAGS:
        return "study"
    if tag in SERIES_TAGS or tag == MODALITIES_IN_STUDY:
        return "series"
    return "instance"


def _value_condition(alias: str, tag: str, vr: str, value: str, args: list[Any]) -> str:
    """SQL true when one of `tag`'s values in `alias`'s JSON matches `value`."""
    column = "upper(json_extract(v.value, '$.Alphabetic'))" if vr == "PN" else "CAST(v.value AS TEXT)"
    if vr == "UI":
        test = _uid_in(column, value, args)
    elif vr in ("DA", "TM", "DT") and "-" in value:
        low, high = value.split("-", 1)
        tests = []
        for bound, op in ((low, ">="), (high, "<=")):
            if bound:
                tests.append(f"substr({column}, 1, {len(bound)}) {op} ?")
                args.append(bound)
        test = " AND ".join(tests) or "1"
    elif "*" in value or "?" in value:
        pattern = value.replace("[", "[[]")
        test = f"{column} GLOB ?"
        args.append(pattern.upper() if vr == "PN" else pattern)
    else:
        test = f"{column} = ?"
        args.append(value.upper() if vr == "PN" else value)
    return f"EXISTS (SELECT 1 FROM json_each({alias}.dicom_json, '$.\"{tag}\".Value') v WHERE {test})"


def _uid_in(column: str, value: str, args: list[Any]) -> str:
    uids = [u for u in re.split(r"[,\\]", value) if u]
    args += uids
    return f"{column} IN ({', '.join('?' * len(uids))})"


def _condition(level: str, tag: str, value: str, args: list[Any]) -> str:
    """SQL true when the row of `level` matches `tag`=`value`."""
    if tag == MODALITIES_IN_STUDY:
        tag = "00080060"
    home = _home(tag)
    table = _TABLES[home]
    below = _DEPTH[home] > _DEPTH[level]  # held in rows beneath: some of them must match
    alias = "x" if below else table.alias  # else this row, or a row joined above it
    if tag in table.uid:  # a column, and indexed
        test = _uid_in(f"{alias}.{table.uid[tag]}", value, args)
    else:
        test = _value_condition(alias, tag, _vr(tag), value, args)
    if not below:
        return test
    link, base = ("study_uid" if level == "study" else "series_uid"), _TABLES[level].alias
    return f"EXISTS (SELECT 1 FROM {table.name} x WHERE x.{link} = {base}.{link} AND {test})"


def parse_params(params: Sequence[tuple[str, str]]) -> tuple[dict[str, str], set[str] | None, int | None, int]:
    """Split query parameters into match keys (tag -> value), includefield
    tags (None for `all`), limit and offset."""
    keys: dict[str, str] = {}
    include: set[str] | None = set()
    limit, offset = None, 0
    for name, value in params:
        if name == "includefield":
            for item in filter(None, (v.strip() for v in value.split(","))):
                if item == "all":
                    include = None
                elif include is not None:
                    include.add(_tag(item))
        elif name in ("limit", "offset"):
            number = whole(value, name, "bad_query")
            if name == "limit":
                limit = number
            else:
                offset = number
        elif name in CONTROL:
            continue
        elif "." in name and not re.fullmatch(r"[0-9A-Fa-f]{8}", name):
            raise QueryError(f"sequence matching ({name}) is not supported")
        else:
            keys[_tag(name)] = value
    return keys, include, limit, offset


def search(
    db: sqlite3.Connection,
    level: str,
    params: Sequence[tuple[str, str]],
    scope: Mapping[str, str],
    retrieve_url: Any,
) -> tuple[list[dict[str, Any]], bool]:
    """Matching studies, series or instances as DICOM JSON, and whether more
    matched than were returned. `scope` holds the UIDs from the path
    (tag -> UID); `retrieve_url(row)` gives each result's RetrieveURL."""
    keys, include, limit, offset = parse_params(params)
    args: list[Any] = []
    conditions = [_condition(level, tag, value, args) for tag, value in {**keys, **scope}.items() if value != ""]
    base = _TABLES[level]
    joins = ""
    if level != "study":
        joins += f" JOIN studies st ON st.study_uid = {base.alias}.study_uid"
    if level == "instance":
        joins += " JOIN series se ON se.series_uid = i.series_uid"
    page = min(limit, MAX_RESULTS) if limit is not None else MAX_RESULTS
    sql = (
        f"SELECT {_columns(level)} FROM {base.name} {base.alias}{joins}"
        f" WHERE {' AND '.join(conditions) or '1'} ORDER BY {base.alias}.rowid LIMIT ? OFFSET ?"
    )
    rows = db.execute(sql, [*args, page + 1, offset]).fetchall()
    more = len(rows) > page
    results = [_result(db, level, row, keys, include, retrieve_url) for row in rows[:page]]
    return results, more and (limit is None or limit > MAX_RESULTS)


def _columns(level: str) -> str:
    if level == "study":
        return (
            "st.study_uid, NULL, NULL, st.dicom_json, NULL,"
            " (SELECT COUNT(*) FROM series WHERE study_uid = st.study_uid),"
            " (SELECT COUNT(*) FROM instances WHERE study_uid = st.study_uid),"
            " (SELECT json_group_array(DISTINCT json_extract(dicom_json, '$.\"00080060\".Value[0]'))"
            "  FROM series WHERE study_uid = st.study_uid)"
        )
    if level == "series":
        return ("se.study_uid, se.series_uid, NULL, st.dicom_json, se.dicom_json,"
                " (SELECT COUNT(*) FROM instances WHERE series_uid = se.series_uid), NULL, NULL")
    return "i.study_uid, i.series_uid, i.sop_uid, st.dicom_json, se.dicom_json, i.dicom_json, i.transfer_syntax, NULL"


def _result(db: sqlite3.Connection, level: str, row: tuple[Any, ...], keys: Mapping[str, str],
            include: set[str] | None, retrieve_url: Any) -> dict[str, Any]:
    study_uid, series_uid, sop_uid, study_json, series_json, extra, extra2, modalities = row
    out: dict[str, Any] = json.loads(study_json)
    if series_json:
        out.update(json.loads(series_json))
    wanted = set(keys) | (include or set())
    if level == "study":
        out["00201206"] = {"vr": "IS", "Value": [extra]}
        out["00201208"] = {"vr": "IS", "Value": [extra2]}
        found = sorted(m for m in json.loads(modalities) if m)
        out[MODALITIES_IN_STUDY] = {"vr": "CS", "Value": found} if found else {"vr": "CS"}
    elif level == "series":
        out["00201209"] = {"vr": "IS", "Value": [extra]}
    else:
        instance = json.loads(extra)
        for tag in INSTANCE_DEFAULT if include is not None else instance:
            if tag in instance:
                out[tag] = instance[tag]
        out["00083002"] = {"vr": "UI", "Value": [extra2]}  # Available Transfer Syntax UID
    missing = (wanted - out.keys()) if include is not None else {"all"}
    if level != "instance" and missing:
        out = {**_representative(db, level, study_uid, series_uid, missing), **out}
    for tag in wanted - out.keys():
        out[tag] = {"vr": _vr(tag)}  # asked for, not present: returned empty (PS3.18 10.6.3.3)
    out["00081190"] = {"vr": "UR", "Value": [retrieve_url(study_uid, series_uid, sop_uid)]}
    return dict(sorted(out.items()))


def _representative(db: sqlite3.Connection, level: str, study_uid: str, series_uid: str | None,
                    tags: set[str]) -> dict[str, Any]:
    """Attributes the study/series row does not hold, from its first instance."""
    column, uid = ("study_uid", study_uid) if level == "study" else ("series_uid", series_uid)
    row = db.execute(f"SELECT dicom_json FROM instances WHERE {column} = ? ORDER BY rowid LIMIT 1", (uid,)).fetchone()
    if row is None:
        return {}
    instance = json.loads(row[0])
    if "all" in tags:
        return instance
    return {tag: instance[tag] for tag in tags if tag in instance}
