"""SQL building blocks for DICOM matching that Django lacks, shared by C-FIND (`query.py`) and
QIDO-RS (`dicomweb/qido.py`): DICOM wildcard matching (`*`, `?`) and text extraction from the DICOM
JSON `tags` columns. PostgreSQL and SQLite."""

from __future__ import annotations

from django.db import NotSupportedError
from django.db.models import BooleanField, F, Func, Lookup, TextField


def like_pattern(value: str) -> str:
    """A DICOM wildcard value as a LIKE pattern with `\\` as the escape character."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def glob_pattern(value: str) -> str:
    """A DICOM wildcard value as an SQLite GLOB pattern (case-sensitive; `*` and `?` carry over)."""
    return value.replace("[", "[[]")


def has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


class DicomWildcard(Lookup):
    """`lhs` matches the DICOM wildcard value `rhs` (PS3.4 C.2.2.2.4); optionally case-insensitive.

    Used as an expression: `queryset.filter(DicomWildcard(F("col"), "Doe*", case_insensitive=True))`.
    """

    lookup_name = "dicom_wildcard"
    prepare_rhs = False

    def __init__(self, lhs, rhs: str, case_insensitive: bool = False) -> None:
        self.case_insensitive = case_insensitive
        super().__init__(lhs, rhs)

    @property
    def output_field(self):
        return BooleanField()

    def as_sql(self, compiler, connection):
        lhs_sql, lhs_params = compiler.compile(self.lhs)
        params = list(lhs_params)
        if connection.vendor == "postgresql":
            operator = "ILIKE" if self.case_insensitive else "LIKE"
            return f"{lhs_sql} {operator} %s ESCAPE '\\'", [*params, like_pattern(self.rhs)]
        if connection.vendor == "sqlite":
            if self.case_insensitive:  # SQLite's LIKE ignores ASCII case
                return f"{lhs_sql} LIKE %s ESCAPE '\\'", [*params, like_pattern(self.rhs)]
            return f"{lhs_sql} GLOB %s", [*params, glob_pattern(self.rhs)]
        if self.case_insensitive:
            return f"UPPER({lhs_sql}) LIKE UPPER(%s) ESCAPE '\\'", [*params, like_pattern(self.rhs)]
        return f"{lhs_sql} LIKE %s ESCAPE '\\'", [*params, like_pattern(self.rhs)]


class JsonText(Func):
    """The text at `path` inside a JSON column (`tags`), NULL where the path does not exist.

    `path` items are object keys (str) or array indexes (int), e.g.
    `("00100010", "Value", 0, "Alphabetic")`.
    """

    output_field = TextField()

    def __init__(self, field: str, path: tuple[str | int, ...]) -> None:
        super().__init__(F(field))
        self.path = path

    def as_postgresql(self, compiler, connection, **extra):
        lhs, params = compiler.compile(self.source_expressions[0])
        return f"({lhs} #>> %s::text[])", [*params, [str(key) for key in self.path]]

    def as_sqlite(self, compiler, connection, **extra):
        lhs, params = compiler.compile(self.source_expressions[0])
        json_path = "$" + "".join(f"[{key}]" if isinstance(key, int) else f'."{key}"' for key in self.path)
        return f"CAST(json_extract({lhs}, %s) AS TEXT)", [*params, json_path]

    def as_sql(self, compiler, connection, **extra):
        raise NotSupportedError(f"DICOM JSON matching is not implemented for {connection.vendor}")
