"""What differs between the catalog's SQL dialects, and nothing else.

The catalog's statements are written once, with `?` placeholders, upserts as
`INSERT ... ON CONFLICT` (SQLite 3.24+ and PostgreSQL both take it) and
`TRUE`; a `Dialect` supplies the few fragments that differ: reading a value
out of the DICOM JSON text, iterating a multi-valued attribute, wildcard
matching, aggregating distinct values into a JSON array, the column that
orders rows by arrival, and the placeholder style of the driver.

DICOM JSON stays TEXT in both databases (PostgreSQL's jsonb would reorder
keys, and the server returns the stored text as it is); PostgreSQL parses it
(`::jsonb`) only inside the searches that look into it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class Dialect:
    """One SQL dialect: see the module docstring for each fragment's contract."""

    name: str
    #: The column that orders a table's rows by arrival.
    arrival: str
    #: The driver's placeholder for `?`.
    placeholder: str

    def sql(self, text: str) -> str:
        """`text` with its `?` placeholders in the driver's style."""
        return _placeholders(text, self.placeholder)

    def first_value(self, column: str, tag: str) -> str:
        """The text of the first value of `tag` in the DICOM JSON `column` (NULL if absent)."""
        if self.name == "sqlite":
            return f"json_extract({column}, '$.\"{tag}\".Value[0]')"
        return f"(({column})::jsonb #>> '{{{tag},Value,0}}')"

    def instance_number(self, column: str = "dicom_json") -> str:
        """An ORDER BY term: Instance Number as an integer, missing (or not
        a number) first, as SQLite's lenient CAST sorts them."""
        value = self.first_value(column, "00200013")
        if self.name == "sqlite":
            return f"CAST({value} AS INTEGER)"
        return f"(CASE WHEN {value} ~ '^ *[+-]{{0,1}}[0-9]+ *$' THEN trim({value})::bigint END) NULLS FIRST"

    def values(self, alias: str, tag: str) -> str:
        """A FROM item `v` with one row per value of `tag` in `alias.dicom_json`."""
        if self.name == "sqlite":
            return f"json_each({alias}.dicom_json, '$.\"{tag}\".Value') v"
        return f"jsonb_array_elements(({alias}.dicom_json)::jsonb -> '{tag}' -> 'Value') v(value)"

    def upper(self, expression: str) -> str:
        """`expression` upper-cased by the database. Person names are
        compared with both sides upper-cased there, so that a backend is
        consistent with itself whatever its notion of case (PostgreSQL's
        follows the database's locale; Python would make 'ß' 'SS')."""
        if self.name == "sqlite":
            return f"unicode_upper({expression})"  # registered on each connection: SQLite's upper is ASCII-only
        return f"upper({expression})"

    def value_text(self) -> str:
        """The text of `v.value` (a value from `values`)."""
        return "CAST(v.value AS TEXT)" if self.name == "sqlite" else "(v.value #>> '{}')"

    def name_groups(self) -> tuple[str, str]:
        """A FROM item `g` with one row per component group (Alphabetic,
        Ideographic, Phonetic) of the Person Name `v.value`, and that
        group's text upper-cased."""
        if self.name == "sqlite":
            return "json_each(v.value) g", self.upper("g.value")
        # an empty name among several is a JSON null (PS3.18 F.2.5), which jsonb_each_text refuses
        objects = "CASE WHEN jsonb_typeof(v.value) = 'object' THEN v.value END"
        return f"jsonb_each_text({objects}) g(key, value)", self.upper("g.value")

    def full_name(self) -> str:
        """The whole Person Name `v.value` as DICOM writes it, its component
        groups joined by `=` and empty trailing groups left out, upper-cased."""
        def group(name: str) -> str:
            return f"json_extract(v.value, '$.{name}')" if self.name == "sqlite" else f"(v.value ->> '{name}')"

        joined = " || '=' || ".join(f"COALESCE({group(name)}, '')" for name in ("Alphabetic", "Ideographic", "Phonetic"))
        return self.upper(f"rtrim({joined}, '=')")

    def wildcard(self, column: str, pattern: str, placeholder: str = "?") -> tuple[str, str]:
        """(condition, argument) matching `column` against a DICOM wildcard
        pattern (`*` any run, `?` one character; everything else literal),
        the argument taking the place of `placeholder` (a `?`, or an
        expression around one)."""
        if self.name == "sqlite":
            return f"{column} GLOB {placeholder}", pattern.replace("[", "[[]")
        escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return f"{column} LIKE {placeholder} ESCAPE '\\'", escaped.replace("*", "%").replace("?", "_")

    def distinct_array(self, expression: str) -> str:
        """An aggregate: the distinct values of `expression` as JSON array text."""
        if self.name == "sqlite":
            return f"json_group_array(DISTINCT {expression})"
        return f"COALESCE(json_agg(DISTINCT {expression})::text, '[]')"


@functools.lru_cache(maxsize=512)
def _placeholders(text: str, placeholder: str) -> str:
    return text if placeholder == "?" else text.replace("?", placeholder)


SQLITE = Dialect("sqlite", arrival="rowid", placeholder="?")
POSTGRES = Dialect("postgresql", arrival="seq", placeholder="%s")
