"""Search parameters turned into SQL conditions on resource records, through the index tables only.

Every condition is an `Sql` (see `sql.py`) about the record `{rec}`: an EXISTS subquery on one
index table correlated on the record id (PostgreSQL plans these as semi-joins driven by the
(resource_type, param, value...) indexes), or a condition on the record's own columns for `_id`
and `_lastUpdated`. Comma-separated values (OR) go into one subquery; each repeated parameter
(AND) adds its own condition. Row conditions are written about the index row `{row}`; each
subquery gets an alias of its own (`ConditionBuilder._alias`), so nested subqueries never shadow
one another.

Range semantics (dates): a resource value covers the half-open range [low, high) (a point when
low == high); a search value covers [ql, qh) by its precision, and the prefixes follow R4:
eq = contained in [ql, qh); gt = some part at or after qh; lt = some part before ql;
ge = gt or eq; le = lt or eq; sa = starts at or after qh; eb = ends at or before ql; ne = not eq;
ap = overlaps the search range widened by 10% of its distance from now.
Numbers and quantities compare the resource's value as a point (as HAPI does): eq/ne/ap use the
search value's implicit precision (`100` is [99.5, 100.5)), gt/lt/ge/le (and sa/eb) the exact value.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from integrations.fhir.models.search_index import (
    STRING_LEN,
    TOKEN_LEN,
    TYPE_LEN,
    UNIT_LEN,
    URL_LEN,
    DateIndex,
    NumberIndex,
    QuantityIndex,
    ReferenceIndex,
    StringIndex,
    TokenIndex,
    UriIndex,
    clip,
)
from integrations.fhir.outcomes import FhirError
from integrations.fhir.search.sql import (
    RECORDS_TABLE,
    Sql,
    adapt_datetime,
    all_of,
    any_of,
    equals,
    like,
    one_of,
)
from integrations.fhir.search.values import (
    bad_value,
    parse_bool,
    parse_date_range,
    parse_number,
    split_prefix,
    split_unescaped,
    unescape,
)
from integrations.fhir.searchparams import (
    SearchParamDef,
    index_params,
    normalize_string,
    resource_types,
    search_params_for,
)

MODEL_FOR_TYPE = {
    "token": TokenIndex,
    "string": StringIndex,
    "reference": ReferenceIndex,
    "date": DateIndex,
    "number": NumberIndex,
    "quantity": QuantityIndex,
    "uri": UriIndex,
}
TABLE_FOR_TYPE = {kind: model._meta.db_table for kind, model in MODEL_FOR_TYPE.items()}
MODIFIERS = {
    "token": frozenset({"missing", "not", "text"}),
    "string": frozenset({"missing", "exact", "contains"}),
    "reference": frozenset({"missing", "identifier"}),  # plus :[type]
    "date": frozenset({"missing"}),
    "number": frozenset({"missing"}),
    "quantity": frozenset({"missing"}),
    "uri": frozenset({"missing", "below", "above"}),
    "composite": frozenset({"missing"}),
}
# Parameters on the ResourceRecord columns rather than index tables.
COLUMN_PARAMS = ("_id", "_lastUpdated")
ROW = "{row}"


class UnknownParameter(Exception):
    """A parameter this resource type does not define (or that the server cannot search on)."""

    def __init__(self, name: str, reason: str = "is not a known search parameter") -> None:
        super().__init__(name)
        self.name = name
        self.reason = reason


def param_def(resource_type: str, code: str) -> SearchParamDef | None:
    """The searchable definition of `code` on `resource_type` (None if unknown or unsearchable)."""
    definition = search_params_for(resource_type).get(code)
    if definition is None or definition.type == "special" or not definition.expression:
        return None
    return definition


def _at(column: str, op: str, value: datetime) -> Sql:
    return Sql(f"{column} {op} %s", (adapt_datetime(value),))


def _range_sql(prefix: str, ql: datetime, qh: datetime) -> Sql:
    """Row condition for a date prefix: the row covers [low, high), the search value [ql, qh)."""
    low, high = f"{ROW}.low", f"{ROW}.high"

    def eq() -> Sql:
        return all_of([_at(low, ">=", ql), _at(high, "<=", qh), _at(low, "<", qh)])

    def gt() -> Sql:
        return _at(high, ">", qh) | _at(low, ">=", qh)

    def lt() -> Sql:
        return _at(low, "<", ql)

    if prefix == "eq":
        return eq()
    if prefix == "ne":
        return ~eq()
    if prefix == "gt":
        return gt()
    if prefix == "lt":
        return lt()
    if prefix == "ge":
        return gt() | eq()
    if prefix == "le":
        return lt() | eq()
    if prefix == "sa":
        return _at(low, ">=", qh)
    if prefix == "eb":
        return _at(high, "<=", ql) & _at(low, "<", ql)
    # ap: overlap with the range widened by a tenth of its distance from now (at least a day).
    gap = max(abs(datetime.now(UTC) - ql) / 10, timedelta(days=1))
    wl, wh = ql - gap, qh + gap
    return _at(low, "<", wh) & (_at(high, ">", wl) | _at(low, ">=", wl))


def _instant_sql(prefix: str, ql: datetime, qh: datetime, column: str) -> Sql:
    """Condition for a prefix on a point-in-time column (_lastUpdated)."""
    if prefix == "eq":
        return _at(column, ">=", ql) & _at(column, "<", qh)
    if prefix == "ne":
        return ~(_at(column, ">=", ql) & _at(column, "<", qh))
    if prefix in ("gt", "sa"):
        return _at(column, ">=", qh)
    if prefix in ("lt", "eb"):
        return _at(column, "<", ql)
    if prefix == "ge":
        return _at(column, ">=", ql)
    if prefix == "le":
        return _at(column, "<", qh)
    gap = max(abs(datetime.now(UTC) - ql) / 10, timedelta(days=1))
    return _at(column, ">=", ql - gap) & _at(column, "<", qh + gap)


def _number_sql(prefix: str, number: Decimal, low: Decimal, high: Decimal) -> Sql:
    """Row condition on the `value` column for a number/quantity prefix."""
    exact, ql, qh = float(number), float(low), float(high)
    value = f"{ROW}.value"
    if prefix == "eq":
        return Sql(f"({value} >= %s AND {value} < %s)", (ql, qh))
    if prefix == "ne":
        return Sql(f"({value} < %s OR {value} >= %s)", (ql, qh))
    if prefix in ("gt", "sa"):
        return Sql(f"{value} > %s", (exact,))
    if prefix in ("lt", "eb"):
        return Sql(f"{value} < %s", (exact,))
    if prefix == "ge":
        return Sql(f"{value} >= %s", (exact,))
    if prefix == "le":
        return Sql(f"{value} <= %s", (exact,))
    margin = abs(exact) / 10 or (qh - ql) / 2
    return Sql(f"({value} >= %s AND {value} <= %s)", (exact - margin, exact + margin))


def _uri_ancestors(uri: str) -> list[str]:
    """`uri` and each of its parents at '/' boundaries, down to scheme://host (for :above)."""
    ancestors = [uri]
    scheme_end = uri.find("://")
    floor = uri.find("/", scheme_end + 3) if scheme_end >= 0 else 0
    current = uri.rstrip("/")
    while True:
        cut = current.rfind("/")
        if cut <= 0 or (floor > 0 and cut < floor) or (scheme_end >= 0 and cut <= scheme_end + 2):
            break
        current = current[:cut]
        ancestors.append(current)
    return ancestors


class ConditionBuilder:
    """Builds record-level conditions for (parameter, value) pairs of one request.

    `base_url` (the server's own FHIR base, if known) lets an absolute reference to this server
    match the relative references stored in resources.
    """

    def __init__(self, base_url: str | None = None) -> None:
        self.base_url = base_url.rstrip("/") if base_url else None
        self._aliases = 0

    def _alias(self, prefix: str) -> str:
        self._aliases += 1
        return f"{prefix}{self._aliases}"

    def _rows_exist(self, kind: str, correlation: str, row: Sql, params: tuple = ()) -> Sql:
        """EXISTS an index row of `kind` satisfying `correlation` (with `params`) and `row`."""
        alias = self._alias("i")
        text = f"EXISTS (SELECT 1 FROM {TABLE_FOR_TYPE[kind]} {alias} WHERE {correlation} AND {row.text})"
        return Sql(text.replace(ROW, alias), params + row.params)

    def _index_rows(
        self, kind: str, resource_type: str, param: str, row: Sql, *, any_type: bool = False
    ) -> Sql:
        """EXISTS a row of the record in the `kind` index for `param` that satisfies `row` (the
        rows of its members for a union parameter: `searchparams.index_params`)."""
        params = index_params(resource_type, param.split("$", 1)[0])
        if "$" in param:  # a component of a composite: the members' same component
            params = tuple(f"{member}${param.split('$', 1)[1]}" for member in params)
        param_sql = "= %s" if len(params) == 1 else f"IN ({', '.join(['%s'] * len(params))})"
        if any_type:
            return self._rows_exist(
                kind, f"{ROW}.record_id = {{rec}}.id AND {ROW}.param {param_sql}", row, params
            )
        exists = self._rows_exist(
            kind,
            f"{ROW}.record_id = {{rec}}.id AND {ROW}.resource_type = %s AND {ROW}.param {param_sql}",
            row,
            (resource_type, *params),
        )
        # The index rows of a deleted record are removed with it, and each row repeats its
        # record's type: the rows alone say which live records match.
        alias = self._alias("d")
        records = Sql(
            f"SELECT {alias}.record_id AS id FROM {TABLE_FOR_TYPE[kind]} {alias} "
            f"WHERE {alias}.resource_type = %s AND {alias}.param {param_sql} AND {row.text.replace(ROW, alias)}",
            (resource_type, *params, *row.params),
        )
        return Sql(exists.text, exists.params, records)

    def _records(self, resource_type: str, column: str, inner: Sql | None) -> str:
        """A subquery text (and `inner`'s params) of `column` of live `resource_type` records."""
        alias = self._alias("r")
        where = f"{alias}.resource_type = %s AND NOT {alias}.deleted"
        if inner is not None:
            where += f" AND {inner.on(alias).text}"
        return f"SELECT {alias}.{column} FROM {RECORDS_TABLE} {alias} WHERE {where}"

    # --- entry point ------------------------------------------------------------------------

    def condition(
        self, resource_type: str, name: str, value: str | tuple[str, str], *, any_type: bool = False
    ) -> Sql | None:
        """The condition `name=value` puts on records of `resource_type`.

        None when the value is empty (ignored, as the spec says). Raises `UnknownParameter`
        for a parameter the type does not define, `FhirError` 400 for a bad value or modifier.
        With `any_type`, the index rows are not restricted to `resource_type` (a system-level
        search on a parameter every searched type shares, such as `_tag`).
        """
        if value == "":
            return None
        if isinstance(value, tuple):
            return self._range(resource_type, name, value, any_type)
        if name.startswith("_has:"):
            return self._has(resource_type, name, value)
        head, dot, rest = name.partition(".")
        code, _, modifier = head.partition(":")
        if dot:
            return self._chain(resource_type, name, code, modifier or None, rest, value)
        if code == "_id":
            return self._id(name, modifier or None, value)
        if code == "_lastUpdated":
            if modifier:
                raise self._bad_modifier(name, modifier, "date")
            return any_of(
                [
                    _instant_sql(prefix, *parse_date_range(name, rest_), column="{rec}.last_updated")
                    for prefix, rest_ in self._prefixed(name, value)
                ]
            )
        definition = param_def(resource_type, code)
        if definition is None:
            if code in search_params_for(resource_type):
                raise UnknownParameter(name, "is not supported by this server")
            raise UnknownParameter(name)
        return self._param(resource_type, definition, name, modifier or None, value, any_type)

    def _range(self, resource_type: str, name: str, bounds: tuple[str, str], any_type: bool) -> Sql:
        """A lower and an upper bound of one parameter (see `request._pair_range_bounds`).

        For a date parameter both bounds must hold for the same value (one index row); for any
        other type they are two independent conditions.
        """
        definition = param_def(resource_type, name)
        if definition is None or definition.type != "date":
            first = self.condition(resource_type, name, bounds[0], any_type=any_type)
            second = self.condition(resource_type, name, bounds[1], any_type=any_type)
            return first & second
        row = self._row_sql(definition, name, None, bounds[0]) & self._row_sql(
            definition, name, None, bounds[1]
        )
        return self._index_rows("date", resource_type, definition.code, row, any_type=any_type)

    # --- one parameter -----------------------------------------------------------------------

    def _param(
        self,
        resource_type: str,
        definition: SearchParamDef,
        name: str,
        modifier: str | None,
        value: str,
        any_type: bool = False,
    ) -> Sql:
        kind = definition.type
        code = definition.code
        type_modifier = kind == "reference" and modifier in resource_types()
        if modifier is not None and modifier not in MODIFIERS.get(kind, ()) and not type_modifier:
            raise self._bad_modifier(name, modifier, kind)
        if modifier == "missing":
            missing = parse_bool(name, value)
            table_kind = definition.components[0].param.type if kind == "composite" else kind
            param = f"{code}$0" if kind == "composite" else code
            present = self._index_rows(table_kind, resource_type, param, Sql("1 = 1"), any_type=any_type)
            return ~present if missing else present
        alternatives = split_unescaped(value, ",")
        if kind == "composite":
            # A union of composites (Observation's combo-*): either member's pairs.
            members = [param_def(resource_type, member) for member in index_params(resource_type, code)]
            if None in members:
                raise UnknownParameter(name, "is not supported by this server")
            return any_of(
                [
                    self._composite(resource_type, member, name, alt)
                    for alt in alternatives
                    for member in members
                ]
            )
        row = any_of([self._row_sql(definition, name, modifier, alt) for alt in alternatives])
        exists = self._index_rows(kind, resource_type, code, row, any_type=any_type)
        # :not matches resources without any matching token, including those without the element.
        return ~exists if modifier == "not" else exists

    def _row_sql(self, definition: SearchParamDef, name: str, modifier: str | None, raw: str) -> Sql:
        """Condition on one index row `{row}` for one (OR-alternative) value."""
        kind = definition.type
        if kind == "token":
            return self._token_sql(name, modifier, raw)
        if kind == "string":
            text = unescape(raw)
            normalised = clip(normalize_string(text), STRING_LEN)
            if modifier == "exact":
                return equals(f"{ROW}.value", normalised) & equals(f"{ROW}.exact", text)
            if modifier == "contains":
                return like(f"{ROW}.value", normalised, kind="contains")
            return like(f"{ROW}.value", normalised, kind="startswith")
        if kind == "reference":
            return self._reference_sql(definition, name, modifier, raw)
        if kind == "date":
            prefix, rest = split_prefix(raw)
            self._check_prefix(name, raw, prefix, rest)
            return _range_sql(prefix, *parse_date_range(name, rest))
        if kind == "number":
            prefix, rest = split_prefix(raw)
            self._check_prefix(name, raw, prefix, rest)
            return _number_sql(prefix, *parse_number(name, rest))
        if kind == "quantity":
            return self._quantity_sql(name, raw)
        if kind == "uri":
            uri = unescape(raw)
            if modifier == "below":
                return like(f"{ROW}.uri", clip(uri, URL_LEN), kind="startswith")
            if modifier == "above":
                return one_of(f"{ROW}.uri", [clip(u, URL_LEN) for u in _uri_ancestors(uri)])
            return equals(f"{ROW}.uri", clip(uri, URL_LEN))
        raise UnknownParameter(name, "is not supported by this server")

    def _token_sql(self, name: str, modifier: str | None, raw: str) -> Sql:
        if modifier == "text":
            text = normalize_string(unescape(raw))
            return like(f"{ROW}.text", text, kind="startswith") | like(
                f"{ROW}.text", f" {text}", kind="contains"
            )
        parts = split_unescaped(raw, "|")
        if len(parts) == 1:
            return equals(f"{ROW}.code", clip(unescape(parts[0]), TOKEN_LEN))
        if len(parts) != 2:
            raise bad_value(name, raw, "a token is [system]|[code] or code")
        system, code = (clip(unescape(p), TOKEN_LEN) for p in parts)
        if not code:
            if not system:
                raise bad_value(name, raw, "a token needs a system or a code")
            return equals(f"{ROW}.system", system)
        # '|code' means: no system (stored as '')
        return equals(f"{ROW}.code", code) & equals(f"{ROW}.system", system)

    def _quantity_sql(self, name: str, raw: str) -> Sql:
        parts = split_unescaped(raw, "|")
        if len(parts) not in (1, 3):
            raise bad_value(name, raw, "a quantity is [prefix]number or [prefix]number|system|code")
        prefix, number = split_prefix(unescape(parts[0]))
        self._check_prefix(name, raw, prefix, number)
        condition = _number_sql(prefix, *parse_number(name, number))
        if len(parts) == 3:
            system, code = clip(unescape(parts[1]), TOKEN_LEN), clip(unescape(parts[2]), UNIT_LEN)
            if system and code:
                condition &= equals(f"{ROW}.system", system) & equals(f"{ROW}.code", code)
            elif code:
                # Without a system the code may be the UCUM code or the unit as displayed.
                condition &= equals(f"{ROW}.code", code) | equals(f"{ROW}.unit", code)
            elif system:
                condition &= equals(f"{ROW}.system", system)
        return condition

    def _reference_sql(self, definition: SearchParamDef, name: str, modifier: str | None, raw: str) -> Sql:
        if modifier == "identifier":
            parts = split_unescaped(raw, "|")
            if len(parts) == 1:
                return equals(f"{ROW}.identifier_value", clip(unescape(parts[0]), TOKEN_LEN))
            if len(parts) != 2:
                raise bad_value(name, raw, "an identifier is [system]|value")
            system, value = (clip(unescape(p), TOKEN_LEN) for p in parts)
            condition = equals(f"{ROW}.identifier_system", system)
            return condition & equals(f"{ROW}.identifier_value", value) if value else condition
        if modifier is not None and definition.target and modifier not in definition.target:
            raise bad_value(name, raw, f"{definition.code} cannot refer to a {modifier}")
        text = unescape(raw)
        if "://" in text or text.startswith("urn:"):
            return self._absolute_reference_sql(text, modifier)
        parts = text.split("/")
        if len(parts) == 4 and parts[2] == "_history":
            parts = parts[:2]
        if len(parts) == 1:
            condition = equals(f"{ROW}.target_id", clip(text, TYPE_LEN))
            return condition & equals(f"{ROW}.target_type", modifier) if modifier else condition
        if len(parts) == 2 and parts[0] in resource_types():
            if modifier and parts[0] != modifier:
                raise bad_value(
                    name, raw, f"the reference type {parts[0]} contradicts the modifier :{modifier}"
                )
            return _target(parts[0], parts[1])
        return equals(f"{ROW}.url", clip(text.split("|", 1)[0], URL_LEN))

    def _absolute_reference_sql(self, text: str, modifier: str | None) -> Sql:
        # Canonical references may carry |version; the index keeps them without it.
        url = text.split("|", 1)[0]
        condition = equals(f"{ROW}.url", clip(url, URL_LEN))
        if self.base_url and url.startswith(self.base_url + "/"):
            # This server's own URL: also match the relative references stored in resources.
            parts = url[len(self.base_url) + 1 :].split("/")
            if len(parts) in (2, 4) and parts[0] in resource_types() and (modifier in (None, parts[0])):
                condition |= _target(parts[0], parts[1])
        return condition

    def _composite(self, resource_type: str, definition: SearchParamDef, name: str, raw: str) -> Sql:
        """All components must match within the same element (same record and group_no)."""
        parts = split_unescaped(raw, "$")
        components = definition.components
        if len(parts) != len(components):
            raise bad_value(name, raw, f"{definition.code} needs {len(components)} values separated by '$'")
        inner: Sql | None = None
        for index in range(len(components) - 1, -1, -1):
            component = components[index].param
            if component.type not in MODEL_FOR_TYPE:
                raise UnknownParameter(name, "is not supported by this server")
            row = self._row_sql(component, name, None, parts[index])
            if inner is not None:
                row &= inner
            correlation = (
                f"{ROW}.record_id = {{rec}}.id"
                if index == 0
                else f"{ROW}.record_id = {{outer}}.record_id AND {ROW}.group_no = {{outer}}.group_no"
            )
            condition = self._rows_exist(
                component.type,
                f"{correlation} AND {ROW}.resource_type = %s AND {ROW}.param = %s",
                row,
                (resource_type, f"{definition.code}${index}"),
            )
            # The next (outer) component's row is what this one correlates with.
            inner = Sql(condition.text.replace("{outer}", ROW), condition.params)
        assert inner is not None
        return inner

    def _id(self, name: str, modifier: str | None, value: str) -> Sql:
        ids = [clip(unescape(v), TYPE_LEN) for v in split_unescaped(value, ",") if v]
        if modifier == "not":
            return ~one_of("{rec}.logical_id", ids)
        if modifier:
            raise self._bad_modifier(name, modifier, "token")
        return one_of("{rec}.logical_id", ids)

    # --- chains and reverse chains -------------------------------------------------------------

    def _chain(
        self, resource_type: str, name: str, code: str, type_modifier: str | None, rest: str, value: str
    ) -> Sql:
        """`subject:Patient.name=peter`: references to records of the target type matching `rest`."""
        definition = param_def(resource_type, code)
        if definition is None:
            raise UnknownParameter(name)
        if definition.type != "reference":
            raise FhirError.single(
                400, "invalid", f"search parameter '{name}': only reference parameters can be chained"
            )
        if type_modifier is not None:
            if type_modifier not in resource_types() or (
                definition.target and type_modifier not in definition.target
            ):
                raise self._bad_modifier(name, type_modifier, "reference")
            targets = [type_modifier]
        else:
            targets = [t for t in definition.target if t in resource_types()] or sorted(resource_types())
        alternatives = []
        for target in targets:
            try:
                inner = self.condition(target, rest, value)
            except UnknownParameter:
                continue  # this target type lacks the chained parameter; the others may have it
            matching = self._records(target, "logical_id", inner)
            alternatives.append(
                Sql(
                    f"({ROW}.target_type = %s AND {ROW}.target_id IN ({matching}))",
                    (target, target, *(inner.params if inner is not None else ())),
                )
            )
        if not alternatives:
            raise UnknownParameter(name, "names a chained parameter that no target type defines")
        return self._index_rows("reference", resource_type, code, any_of(alternatives))

    def _has(self, resource_type: str, name: str, value: str) -> Sql:
        """`_has:Observation:patient:code=x`: some Observation whose `patient` refers here matches."""
        parts = name.split(":", 3)
        if len(parts) != 4 or not all(parts[1:]):
            raise FhirError.single(
                400, "invalid", f"'{name}': _has is _has:[type]:[reference parameter]:[parameter]"
            )
        _, source_type, ref_code, rest = parts
        if source_type not in resource_types():
            raise FhirError.single(400, "invalid", f"'{name}': {source_type} is not a resource type")
        reference = param_def(source_type, ref_code)
        if reference is None or reference.type != "reference":
            raise FhirError.single(
                400, "invalid", f"'{name}': {ref_code} is not a reference parameter of {source_type}"
            )
        inner = self.condition(source_type, rest, value)
        sources = self._records(source_type, "id", inner)
        return self._rows_exist(
            "reference",
            f"{ROW}.resource_type = %s AND {ROW}.param = %s AND {ROW}.target_type = %s"
            f" AND {ROW}.target_id = {{rec}}.logical_id AND {ROW}.record_id IN ({sources})",
            Sql("1 = 1"),
            (source_type, ref_code, resource_type, source_type, *(inner.params if inner is not None else ())),
        )

    # --- helpers ------------------------------------------------------------------------------

    def _prefixed(self, name: str, value: str) -> list[tuple[str, str]]:
        out = []
        for alternative in split_unescaped(value, ","):
            prefix, rest = split_prefix(alternative)
            self._check_prefix(name, alternative, prefix, rest)
            out.append((prefix, rest))
        return out

    @staticmethod
    def _check_prefix(name: str, raw: str, prefix: str, rest: str) -> None:
        if rest[:1].isalpha():
            if raw.startswith(prefix):
                raise bad_value(name, raw, f"'{rest}' after the prefix '{prefix}' is not a value")
            raise bad_value(
                name, raw, f"unknown prefix '{rest[:2]}' (use eq, ne, gt, lt, ge, le, sa, eb or ap)"
            )
        if not rest:
            raise bad_value(name, raw, f"the prefix '{prefix}' needs a value")

    @staticmethod
    def _bad_modifier(name: str, modifier: str, kind: str) -> FhirError:
        return FhirError.single(
            400,
            "invalid",
            f"search parameter '{name}': the modifier :{modifier} is not supported for {kind} parameters",
        )


def _target(resource_type: str, logical_id: str) -> Sql:
    """Row condition: the reference points at `resource_type/logical_id`."""
    return Sql(
        f"({ROW}.target_type = %s AND {ROW}.target_id = %s)", (resource_type, clip(logical_id, TYPE_LEN))
    )
