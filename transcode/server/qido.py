"""QIDO-RS (PS3.18 10.6) over the archive's catalog.

The query parameters become match keys, includefield tags, limit and offset
here; the catalog matches them in SQL (transcode.catalog.search: single
value, `*` and `?` wildcards, UID lists, date and time ranges, empty value =
return without matching, person names case-insensitively), and each row
becomes a DICOM JSON result here.

Results are in the order instances arrived. Without `limit` at most
`MAX_RESULTS` come back, with a Warning header saying more exist.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydicom.datadict import tag_for_keyword

from transcode.catalog.base import Catalog
from transcode.catalog.search import MODALITIES_IN_STUDY, vr
from transcode.server.params import whole

MAX_RESULTS = 1000
CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}


class QueryError(ValueError):
    """A query the server cannot answer as asked (HTTP 400)."""


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
    catalog: Catalog,
    level: str,
    params: Sequence[tuple[str, str]],
    scope: Mapping[str, str],
    retrieve_url: Any,
) -> tuple[list[dict[str, Any]], bool]:
    """Matching studies, series or instances as DICOM JSON, and whether more
    matched than were returned. `scope` holds the UIDs from the path
    (tag -> UID); `retrieve_url(row)` gives each result's RetrieveURL."""
    keys, include, limit, offset = parse_params(params)
    page = min(limit, MAX_RESULTS) if limit is not None else MAX_RESULTS
    rows = catalog.search(level, {**keys, **scope}, page + 1, offset)
    more = len(rows) > page
    results = [_result(catalog, level, row, keys, include, retrieve_url) for row in rows[:page]]
    return results, more and (limit is None or limit > MAX_RESULTS)


def _result(catalog: Catalog, level: str, row: tuple[Any, ...], keys: Mapping[str, str],
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
        out = {**_representative(catalog, level, study_uid, series_uid, missing), **out}
    for tag in wanted - out.keys():
        out[tag] = {"vr": vr(tag)}  # asked for, not present: returned empty (PS3.18 10.6.3.3)
    out["00081190"] = {"vr": "UR", "Value": [retrieve_url(study_uid, series_uid, sop_uid)]}
    return dict(sorted(out.items()))


def _representative(catalog: Catalog, level: str, study_uid: str, series_uid: str | None,
                    tags: set[str]) -> dict[str, Any]:
    """Attributes the study/series row does not hold, from its first instance."""
    text = catalog.representative(level, study_uid if level == "study" else series_uid)  # type: ignore[arg-type]
    if text is None:
        return {}
    instance = json.loads(text)
    if "all" in tags:
        return instance
    return {tag: instance[tag] for tag in tags if tag in instance}
