"""SQL building blocks for DICOM matching that Django lacks, used by `matching.py` (the rules C-FIND
and QIDO-RS share): DICOM wildcards (`*`, `?`) as LIKE / GLOB patterns, case folding of person
names, and reading the values of an attribute out of a DICOM JSON `tags` column. PostgreSQL and
SQLite.

Case folding must agree between the two databases: PostgreSQL's `lower()` / `ILIKE` fold every
Unicode letter, SQLite's `LIKE` / `lower()` only ASCII ones (`MÜLLER*` would not find `Müller`).
So every SQLite connection gets `btt_fold(text)`, Python's own `str.lower` as a deterministic SQL
function (`register_sqlite_functions`, connected to `connection_created` by the app config), and
folded comparisons on SQLite go through it.
"""

from __future__ import annotations

from typing import Any

SQLITE_FOLD_FUNCTION = "btt_fold"


def fold_case(text: str) -> str:
    """Case-fold a person name for comparison; per character, like PostgreSQL's `lower()`
    (`str.casefold` would turn `ß` into `ss`, which `?` wildcards would then count as two)."""
    return text.lower()


def _sqlite_fold(value: Any) -> Any:
    return fold_case(value) if isinstance(value, str) else value


def register_sqlite_functions(sender: Any, connection: Any, **kwargs: Any) -> None:
    """`connection_created` receiver: add `btt_fold` to each new SQLite connection."""
    if connection.vendor == "sqlite":
        connection.connection.create_function(SQLITE_FOLD_FUNCTION, 1, _sqlite_fold, deterministic=True)


def like_pattern(value: str) -> str:
    """A DICOM wildcard value as a LIKE pattern with `\\` as the escape character."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def glob_pattern(value: str) -> str:
    """A DICOM wildcard value as an SQLite GLOB pattern (case-sensitive; `*` and `?` carry over)."""
    return value.replace("[", "[[]")


def has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def wildcard_sql(column: str, value: str, vendor: str, *, fold: bool) -> tuple[str, list]:
    """`column` matches the DICOM wildcard value `value` (PS3.4 C.2.2.2.4); `fold`: ignoring case."""
    if vendor == "sqlite":
        if fold:
            return f"{SQLITE_FOLD_FUNCTION}({column}) GLOB %s", [glob_pattern(fold_case(value))]
        return f"{column} GLOB %s", [glob_pattern(value)]
    operator = "ILIKE" if fold and vendor == "postgresql" else "LIKE"
    if fold and vendor != "postgresql":
        return f"UPPER({column}) LIKE UPPER(%s) ESCAPE '\\'", [like_pattern(value)]
    return f"{column} {operator} %s ESCAPE '\\'", [like_pattern(value)]


def folded_equal_sql(column: str, value: str, vendor: str) -> tuple[str, list]:
    """`column` equals `value`, ignoring case."""
    if vendor == "sqlite":
        return f"{SQLITE_FOLD_FUNCTION}({column}) = %s", [fold_case(value)]
    return f"lower({column}) = lower(%s)", [value]


# --- DICOM JSON ---------------------------------------------------------------------------------------
# An attribute's values are read as a set of rows: `json_elements` is a FROM item giving one row
# per value of the attribute `tag` of the DICOM JSON object `source` (none when it is absent),
# `json_value` the SQL of one such value, `json_item` a sequence item as the `source` of its own
# attributes. `source` is the `tags` column, or an item of an enclosing sequence.


def json_elements(source: str, tag: str, alias: str, vendor: str) -> tuple[str, list]:
    if vendor == "postgresql":
        values = f"({source}) -> %s -> 'Value'"
        # Values are arrays in DICOM JSON; anything else yields no rows instead of an error.
        return (
            f"jsonb_array_elements(CASE WHEN jsonb_typeof({values}) = 'array' THEN {values} END) AS {alias}(v)",
            [tag, tag],
        )
    if vendor == "sqlite":
        return f"json_each({source}, %s) AS {alias}", [f'$."{tag}".Value']
    raise NotImplementedError(f"DICOM JSON matching is not implemented for {vendor}")


def json_item(alias: str, vendor: str) -> str:
    if vendor == "postgresql":
        return f"{alias}.v"
    # NULL unless the value is an object: json_each(NULL) yields no rows, a string would not parse.
    return f"(CASE WHEN {alias}.type = 'object' THEN {alias}.value END)"


def json_value(alias: str, vendor: str, *, number: bool = False, person_name: bool = False) -> str:
    """The SQL of one value: text; a number for `number` (NULL for anything else); for
    `person_name` the component groups joined by `=` as a PN is written (`Doe^John=...`)."""
    if vendor == "postgresql":
        if number:
            return f"(CASE WHEN jsonb_typeof({alias}.v) = 'number' THEN ({alias}.v #>> '{{}}')::numeric END)"
        if person_name:
            groups = ", ".join(f"coalesce({alias}.v ->> '{group}', '')" for group in _PN_GROUPS)
            return f"rtrim(concat_ws('=', {groups}), '=')"
        return f"({alias}.v #>> '{{}}')"
    if number:
        return f"(CASE WHEN {alias}.type IN ('integer', 'real') THEN {alias}.value END)"
    if person_name:
        groups = " || '=' || ".join(
            f"coalesce(json_extract({alias}.value, '$.{group}'), '')" for group in _PN_GROUPS
        )
        return f"(CASE WHEN {alias}.type = 'object' THEN rtrim({groups}, '=') ELSE {alias}.value END)"
    return f"{alias}.value"


_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
