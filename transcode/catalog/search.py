"""QIDO-RS matching (PS3.4 C.2.2.2) as SQL for a catalog's dialect.

Each query key becomes one SQL condition on the table that holds the
attribute: the studies and series rows hold the attributes in STUDY_TAGS and
SERIES_TAGS, the instances rows hold every attribute. A key held below the
level searched becomes an EXISTS over the lower table (a study matches
Modality=CT when one of its series does). Matching: single value, `*` and
`?` wildcards, UID lists, date and time ranges. Person names match
case-insensitively (what users typing a name into OHIF expect), in any of
their component groups (a Japanese name typed in kanji finds its
Ideographic group), or whole where the value names several groups
(`Yamada^Tarou=山田^太郎`, as DICOM writes the name). A code string (CS:
Modality, Modalities in Study...) may list alternatives, separated by
commas or backslashes, and matches any of them: OHIF's study list sends
the modalities picked in its filter as `ModalitiesInStudy=CT,MR` and means
either, as Orthanc reads it (a code cannot contain either character, so no
single value is misread; PS3.4 C.2.2.2.8 leaves several values undefined
without Multiple Value Matching negotiated). Results are in the order rows
arrived.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR

from transcode.catalog.base import SERIES_TAGS, STUDY_TAGS
from transcode.catalog.dialect import Dialect

MODALITIES_IN_STUDY = "00080061"
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"


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


def vr(tag: str) -> str:
    """The dictionary VR of a tag (8 hex digits); UN when unknown."""
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


def _value_condition(dialect: Dialect, alias: str, tag: str, value: str, args: list[Any]) -> str:
    """SQL true when one of `tag`'s values in `alias`'s JSON matches `value`."""
    kind = vr(tag)
    column = dialect.value_text()
    if kind == "PN":  # both sides upper-cased by the database; empty trailing groups may be left out
        name = value.rstrip("=")
        if "=" in name:  # the whole name, its groups as written
            test = _single(dialect, dialect.full_name(), name, args, dialect.upper("?"))
        else:  # any one component group
            groups, group = dialect.name_groups()
            test = f"EXISTS (SELECT 1 FROM {groups} WHERE {_single(dialect, group, name, args, dialect.upper('?'))})"
    elif kind == "UI":
        test = _uid_in(column, value, args)
    elif kind in ("DA", "TM", "DT") and "-" in value:
        low, high = value.split("-", 1)
        tests = []
        for bound, op in ((low, ">="), (high, "<=")):
            if bound:
                tests.append(f"substr({column}, 1, {len(bound)}) {op} ?")
                args.append(bound)
        test = " AND ".join(tests) or "TRUE"
    elif kind == "CS":  # a code cannot hold a comma or a backslash: either separates alternatives
        codes = _listed(value) or [value]
        test = " OR ".join(_single(dialect, column, code, args) for code in codes)
    else:
        test = _single(dialect, column, value, args)
    return f"EXISTS (SELECT 1 FROM {dialect.values(alias, tag)} WHERE {test})"


def _single(dialect: Dialect, column: str, value: str, args: list[Any], placeholder: str = "?") -> str:
    """SQL true when `column` matches one value, `*` and `?` as wildcards;
    the value takes the place of `placeholder` (a `?`, or an expression
    around one)."""
    if "*" in value or "?" in value:
        test, pattern = dialect.wildcard(column, value, placeholder)
        args.append(pattern)
        return test
    args.append(value)
    return f"{column} = {placeholder}"


def _listed(value: str) -> list[str]:
    """The values of a list key: separated by commas (QIDO-RS) or
    backslashes (DICOM's value separator, which OHIF sends for UIDs)."""
    return [item for item in re.split(r"[,\\]", value) if item]


def _uid_in(column: str, value: str, args: list[Any]) -> str:
    """SQL true when `column` is one of the UIDs listed; a list of no UIDs
    (`,`) matches anything, as an empty value does (`IN ()` is an SQL
    error in PostgreSQL)."""
    uids = _listed(value)
    if not uids:
        return "TRUE"
    args += uids
    return f"{column} IN ({', '.join('?' * len(uids))})"


def _condition(dialect: Dialect, level: str, tag: str, value: str, args: list[Any]) -> str:
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
        test = _value_condition(dialect, alias, tag, value, args)
    if not below:
        return test
    link, base = ("study_uid" if level == "study" else "series_uid"), _TABLES[level].alias
    return f"EXISTS (SELECT 1 FROM {table.name} x WHERE x.{link} = {base}.{link} AND {test})"


def _columns(dialect: Dialect, level: str) -> str:
    if level == "study":
        modalities = dialect.distinct_array(dialect.first_value("dicom_json", "00080060"))
        return (
            "st.study_uid, NULL, NULL, st.dicom_json, NULL,"
            " (SELECT COUNT(*) FROM series WHERE study_uid = st.study_uid),"
            " (SELECT COUNT(*) FROM instances WHERE study_uid = st.study_uid),"
            f" (SELECT {modalities} FROM series WHERE study_uid = st.study_uid)"
        )
    if level == "series":
        return ("se.study_uid, se.series_uid, NULL, st.dicom_json, se.dicom_json,"
                " (SELECT COUNT(*) FROM instances WHERE series_uid = se.series_uid), NULL, NULL")
    return "i.study_uid, i.series_uid, i.sop_uid, st.dicom_json, se.dicom_json, i.dicom_json, i.transfer_syntax, NULL"


def build(dialect: Dialect, level: str, keys: Mapping[str, str], page: int, offset: int) -> tuple[str, list[Any]]:
    """(SQL, arguments) selecting up to `page` rows of `level` ("study",
    "series", "instance") from `offset` that match every key (tag -> value;
    an empty value matches anything). Each row: study, series and SOP UIDs
    (NULL above the level), the study's and series' DICOM JSON, then for a
    study its series count, instance count and modalities (a JSON array);
    for a series its instance count; for an instance its DICOM JSON and
    transfer syntax."""
    args: list[Any] = []
    conditions = [_condition(dialect, level, tag, value, args) for tag, value in keys.items() if value != ""]
    base = _TABLES[level]
    joins = ""
    if level != "study":
        joins += f" JOIN studies st ON st.study_uid = {base.alias}.study_uid"
    if level == "instance":
        joins += " JOIN series se ON se.series_uid = i.series_uid"
    sql = (
        f"SELECT {_columns(dialect, level)} FROM {base.name} {base.alias}{joins}"
        f" WHERE {' AND '.join(conditions) or 'TRUE'} ORDER BY {base.alias}.{dialect.arrival} LIMIT ? OFFSET ?"
    )
    return sql, [*args, page, offset]
