"""FHIR R4 search parameter definitions and search-value extraction.

The official R4 SearchParameter definitions (``spec/search-parameters.json``, 1,378 resources) are
loaded lazily on first use. :func:`search_params_for` gives the parameters that apply to a resource
type (its own plus the ``Resource``/``DomainResource`` ones), and :func:`extract_search_values`
evaluates every applicable parameter's FHIRPath expression against a resource's JSON and converts
what it matches into the typed values of :mod:`integrations.fhir.search_values`.

FHIRPath subset
---------------
Expressions are parsed once and compiled into Python closures (no fhirpathpy); the compiled
extractor for a resource type is cached, and union branches rooted at another resource type (the
many ``Patient.x | Person.x | Practitioner.x`` expressions) are pruned at compile time. Supported:

* paths (``Observation.code.coding``); a leading upper-case identifier is a type filter on the
  root resource (``Resource``/``DomainResource`` match every type); JSON arrays are flattened;
* choice elements: a step ``value`` on an element also finds ``valueQuantity``, ``valueString``,
  ... and remembers the type named by the suffix;
* ``X as T``, ``(X as T)``, ``X.as(T)``, ``X.ofType(T)`` and ``X is T`` (subtypes such as
  ``Age``/``Duration`` -> ``Quantity`` and ``code``/``id`` -> ``string`` are honoured);
* ``|`` union, parentheses, indexers ``[n]``, literals (strings, booleans, numbers, ``{}``);
* ``=``, ``!=``, ``<``, ``<=``, ``>``, ``>=``, ``and``, ``or``, ``xor``, ``implies``;
* functions ``where(criteria)``, ``exists([criteria])``, ``empty()``, ``not()``, ``first()``,
  ``last()``, ``count()``, ``hasValue()``, ``resolve()``, ``extension(url)``, ``as``, ``ofType``,
  ``is``; ``resolve()`` resolves a reference only far enough to know its resource type (from the
  literal reference, or the contained resource for ``#id``), which is what
  ``.where(resolve() is Patient)`` needs;
* environment variables ``%resource``, ``%rootResource``, ``%context`` and ``%ucum``.

Every expression in the R4 definitions compiles (see ``unsupported_expressions()``).

Value conventions
-----------------
* **Ranges are half-open: ``low`` is inclusive and ``high`` is exclusive**, for dates and numbers.
  A date covers its whole precision: ``2020`` -> [2020-01-01T00:00Z, 2021-01-01T00:00Z),
  ``2020-03-04`` -> [2020-03-04T00:00Z, 2020-03-05T00:00Z), ``2020-03-04T10:00:00Z`` ->
  [10:00:00, 10:00:01). A Period's ``low`` is the start of ``start`` and its ``high`` the
  (exclusive) end of ``end``; a missing start/end gives ``None`` (unbounded). Dates and times
  without a timezone are taken as UTC; all datetimes returned are timezone-aware UTC.
* Numbers have their implicit precision: ``100`` -> [99.5, 100.5), ``5.4`` -> [5.35, 5.45),
  ``5.40`` -> [5.395, 5.405) (only if the JSON was parsed with ``parse_float=Decimal``; a float
  keeps the digits of its shortest repr). Quantity comparators (``<``, ``>=``...) are ignored.
* A ``Range`` becomes one Number/QuantityValue whose ``low``/``high`` come from ``Range.low`` and
  ``Range.high`` (with their implicit precision) and whose ``value`` is the low value (or the high
  one when there is no low). **A missing side is ``Decimal('-Infinity')`` / ``Decimal('Infinity')``**
  (the contract's fields are not optional), so the indexer must map infinite bounds to NULL.
* token: Coding -> (system, code, display); CodeableConcept -> one value per coding plus
  ``TokenValue(None, None, text)`` for its ``text``; Identifier -> (system, value, type.text);
  ContactPoint -> (ContactPoint.system, value) (the HAPI convention, so ``phone|555`` works as well
  as plain ``555``); code/string/uri/id -> (None, value); boolean -> (None, "true"/"false").
* string: string primitives; HumanName -> family, each given, prefix, suffix and text; Address ->
  each line, city, district, state, postalCode, country and text. The text is kept as written;
  :func:`normalize_string` is the shared case/accent folding.
* reference: a literal ``Type/id`` (optionally ``/_history/v``), relative or absolute, gives
  target_type/target_id (absolute ones must end in a known resource type and id) and always keeps
  the literal in ``url``; ``urn:uuid:``/``urn:oid:`` and other URLs give ``url`` only; ``#id``
  (contained) references are not indexed except for their ``identifier``; ``Reference.identifier``
  fills identifier_system/value; canonical/uri strings give ``url`` with any ``|version`` removed.
  Resources inlined in the element (``Bundle.entry[0].resource``) are not indexed.
* uri: the string as written.
* composite: one CompositeValue per element matched by the composite's expression, holding the
  values of each component (typed by the SearchParameter its ``definition`` names); elements for
  which some component has no value are skipped (no search could match them).
* The one erratum in the R4 definitions is corrected: DocumentReference ``relationship`` names its
  component definitions the wrong way round (``code`` is the ``relation`` token, ``target`` the
  ``relatesto`` reference).
* Extraction skips ``_id`` and ``_lastUpdated`` (stored as columns), ``special`` parameters and
  parameters without an expression (``_text``, ``_content``, ``_query``). Parameters that give no
  value are left out of the result, and each parameter's values are de-duplicated.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from integrations.fhir.dates import fhir_date_range
from integrations.fhir.search_values import (
    CompositeValue,
    DateValue,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    SearchValue,
    SimpleValue,
    StringValue,
    TokenValue,
    UriValue,
)

__all__ = [
    "ComponentDef",
    "SearchParamDef",
    "UnsupportedExpression",
    "compile_expression",
    "evaluate",
    "extract_param_values",
    "extract_search_values",
    "normalize_string",
    "param_by_url",
    "resource_types",
    "search_params_for",
    "unsupported_expressions",
]

SPEC_DIR = Path(__file__).resolve().parent / "spec"
SEARCH_PARAMETERS_FILE = SPEC_DIR / "search-parameters.json"
# The server's own SearchParameters beside the standard ones (as HAPI FHIR's custom parameters).
LOCAL_SEARCH_PARAMETERS_FILE = SPEC_DIR / "search-parameters-btt.json"
# Lists every R4 resource type (145): a few (Binary, OperationOutcome, ...) have no own
# SearchParameter, so the bases of the definitions alone would miss them.
PATIENT_COMPARTMENT_FILE = SPEC_DIR / "compartmentdefinition-patient.json"

# Parameters stored as columns of the resource table rather than extracted.
COLUMN_PARAMS = frozenset({"_id", "_lastUpdated"})

# Parameters whose values are exactly the union of others' (R4 Observation's combo-*: the
# observation's own value and its components' values; `phonetic` on the four person types, whose
# values are `name`'s, as this server matches it with the string rules). They write no index rows
# of their own, and a search on one reads its members' rows (`index_params`): an Observation then
# indexes about a third fewer rows, a Patient a tenth. A test checks the unions against the
# definitions' expressions.
_PHONETIC_IS_NAME = {"phonetic": ("name",)}
UNION_PARAMS: dict[str, dict[str, tuple[str, ...]]] = {
    "Observation": {
        "combo-code": ("code", "component-code"),
        "combo-code-value-concept": ("code-value-concept", "component-code-value-concept"),
        "combo-code-value-quantity": ("code-value-quantity", "component-code-value-quantity"),
        "combo-data-absent-reason": ("data-absent-reason", "component-data-absent-reason"),
        "combo-value-concept": ("value-concept", "component-value-concept"),
        "combo-value-quantity": ("value-quantity", "component-value-quantity"),
    },
    "Patient": _PHONETIC_IS_NAME,
    "Person": _PHONETIC_IS_NAME,
    "Practitioner": _PHONETIC_IS_NAME,
    "RelatedPerson": _PHONETIC_IS_NAME,
}


# Parameters whose values include every value of other parameters (`name` holds `family` and
# `given`; `address` holds `address-city`, `-state`, `-postalcode` and `-country`): their index
# rows keep only the values none of those subsets holds (a name's text, prefix and suffix, an
# address's lines), and a search on them reads the subsets' rows too (`index_params`). A Patient
# from an HL7 feed then writes 7 string rows fewer (18 instead of 25 in all). A test checks the
# subsets against the definitions' expressions.
_NAME_PARTS = {"name": ("family", "given")}
_ADDRESS_PARTS = {"address": ("address-city", "address-state", "address-postalcode", "address-country")}
SUBSET_PARAMS: dict[str, dict[str, tuple[str, ...]]] = {
    "Patient": {**_NAME_PARTS, **_ADDRESS_PARTS},
    "Practitioner": {**_NAME_PARTS, **_ADDRESS_PARTS},
    "Person": _ADDRESS_PARTS,
    "RelatedPerson": _ADDRESS_PARTS,
    "Organization": _ADDRESS_PARTS,
    "Location": _ADDRESS_PARTS,
    "InsurancePlan": _ADDRESS_PARTS,
}


def index_params(resource_type: str, code: str) -> tuple[str, ...]:
    """The parameter codes whose index rows hold `code`'s values on `resource_type`: `code` and
    its subsets (`SUBSET_PARAMS`), or, for a union parameter (`UNION_PARAMS`), its members'."""
    members = UNION_PARAMS.get(resource_type, {}).get(code)
    if members is None:
        return (code, *SUBSET_PARAMS.get(resource_type, {}).get(code, ()))
    return tuple(dict.fromkeys(p for member in members for p in index_params(resource_type, member)))


_ABSTRACT_BASES = frozenset({"Resource", "DomainResource"})
_NOT_DOMAIN_RESOURCES = frozenset({"Bundle", "Binary", "Parameters"})


class UnsupportedExpression(ValueError):
    """A FHIRPath expression outside the subset this module compiles."""


# --------------------------------------------------------------------------------------------
# Definitions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComponentDef:
    """One component of a composite SearchParameter."""

    definition: str  # canonical URL of the component's SearchParameter
    expression: str  # FHIRPath relative to the element the composite's expression matched
    param: SearchParamDef  # the SearchParameter `definition` names (gives the component's type)


@dataclass(frozen=True)
class SearchParamDef:
    code: str
    url: str
    type: str  # number | date | string | token | reference | composite | quantity | uri | special
    base: tuple[str, ...]
    expression: str | None
    target: tuple[str, ...] = ()  # resource types a reference parameter may point to
    components: tuple[ComponentDef, ...] = ()
    multiple_or: bool = True
    multiple_and: bool = True
    modifiers: tuple[str, ...] = ()  # as declared in the definition (none in the R4 core set)
    comparators: tuple[str, ...] = ()  # eq, ne, gt, ... as declared in the definition
    chain: tuple[str, ...] = ()
    id: str = ""
    name: str = ""
    description: str = field(default="", repr=False, compare=False)


# Known errata in the R4 definitions: DocumentReference-relationship's components name the
# definitions the wrong way round (`code` -> the reference parameter, `target` -> the token one).
_COMPONENT_DEFINITION_FIXES: dict[str, tuple[str, ...]] = {
    "http://hl7.org/fhir/SearchParameter/DocumentReference-relationship": (
        "http://hl7.org/fhir/SearchParameter/DocumentReference-relation",
        "http://hl7.org/fhir/SearchParameter/DocumentReference-relatesto",
    ),
}


@dataclass(frozen=True)
class _Registry:
    by_url: dict[str, SearchParamDef]
    by_base: dict[str, tuple[SearchParamDef, ...]]
    resource_types: frozenset[str]


def _make_def(r: Mapping[str, Any], components: tuple[ComponentDef, ...] = ()) -> SearchParamDef:
    return SearchParamDef(
        code=r["code"],
        url=r["url"],
        type=r["type"],
        base=tuple(r.get("base", ())),
        expression=r.get("expression"),
        target=tuple(r.get("target", ())),
        components=components,
        multiple_or=r.get("multipleOr", True),
        multiple_and=r.get("multipleAnd", True),
        modifiers=tuple(r.get("modifier", ())),
        comparators=tuple(r.get("comparator", ())),
        chain=tuple(r.get("chain", ())),
        id=r.get("id", ""),
        name=r.get("name", ""),
        description=r.get("description", ""),
    )


@cache
def _registry() -> _Registry:
    raw = []
    for path in (SEARCH_PARAMETERS_FILE, LOCAL_SEARCH_PARAMETERS_FILE):
        with path.open(encoding="utf-8") as f:
            raw.extend(e["resource"] for e in json.load(f).get("entry", ()) if e.get("resource"))
    by_url: dict[str, SearchParamDef] = {}
    for r in raw:
        if r["type"] != "composite":
            by_url[r["url"]] = _make_def(r)
    for r in raw:
        if r["type"] == "composite":
            comps = []
            fixed = _COMPONENT_DEFINITION_FIXES.get(r["url"])
            for i, c in enumerate(r.get("component", ())):
                definition = fixed[i] if fixed else c["definition"]
                param = by_url.get(definition)
                if param is None:
                    raise ValueError(f"{r['url']}: unknown component definition {definition}")
                comps.append(ComponentDef(definition, c["expression"], param))
            by_url[r["url"]] = _make_def(r, tuple(comps))
    by_base: dict[str, list[SearchParamDef]] = {}
    for p in (by_url[r["url"]] for r in raw):  # keep the bundle's order
        for b in p.base:
            by_base.setdefault(b, []).append(p)
    types = {b for b in by_base if b not in _ABSTRACT_BASES}
    try:
        with PATIENT_COMPARTMENT_FILE.open(encoding="utf-8") as f:
            types.update(r["code"] for r in json.load(f).get("resource", ()))
    except FileNotFoundError:  # pragma: no cover - shipped with the package
        pass
    return _Registry(by_url, {k: tuple(v) for k, v in by_base.items()}, frozenset(types))


def resource_types() -> frozenset[str]:
    """All R4 resource types (every base of the definitions plus the types without own params)."""
    return _registry().resource_types


def param_by_url(url: str) -> SearchParamDef | None:
    """The SearchParameter with this canonical URL, if it is one of the R4 definitions."""
    return _registry().by_url.get(url)


def search_params_for(resource_type: str) -> dict[str, SearchParamDef]:
    """Every SearchParameter applicable to `resource_type`, by code (cached: do not mutate).

    Includes the ``Resource`` parameters (and ``DomainResource`` ones for domain resources).
    Unknown resource types give an empty dict.
    """
    if resource_type not in _registry().resource_types:
        return {}
    return _search_params_for(resource_type)


@cache
def _search_params_for(resource_type: str) -> dict[str, SearchParamDef]:
    reg = _registry()
    out: dict[str, SearchParamDef] = {}
    for p in reg.by_base.get("Resource", ()):
        out[p.code] = p
    if resource_type not in _NOT_DOMAIN_RESOURCES:
        for p in reg.by_base.get("DomainResource", ()):
            out[p.code] = p
    for p in reg.by_base.get(resource_type, ()):
        out[p.code] = p
    return out


# --------------------------------------------------------------------------------------------
# FHIRPath: tokenizer and parser
# --------------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<number>\d+(?:\.\d+)?)
  | (?P<datetime>@[0-9T:\-+.Z]+)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*|`[^`]+`)
  | (?P<env>%[A-Za-z_][A-Za-z0-9_]*|%`[^`]+`|%'[^']+')
  | (?P<special>\$this|\$index|\$total)
  | (?P<op><=|>=|!=|!~|[|=~<>()\[\].,+\-*/&{}])
    """,
    re.VERBOSE,
)
_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _unescape(s: str) -> str:
    return re.sub(
        r"\\(u[0-9a-fA-F]{4}|.)", lambda m: chr(int(m[1][1:], 16)) if len(m[1]) == 5 else _ESCAPES[m[1]], s
    )


def _tokenize(expr: str) -> list[tuple[str, Any]]:
    toks: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN_RE.match(expr, pos)
        if m is None:
            raise UnsupportedExpression(f"cannot tokenize {expr!r} at {pos}")
        pos = m.end()
        kind = m.lastgroup
        text = m.group()
        if kind == "ws":
            continue
        if kind == "string":
            toks.append(("lit", _unescape(text[1:-1])))
        elif kind == "number":
            toks.append(("lit", Decimal(text) if "." in text else int(text)))
        elif kind == "datetime":
            toks.append(("lit", text[1:]))
        elif kind == "ident":
            toks.append(("ident", text.strip("`")))
        elif kind == "env":
            toks.append(("env", text[1:].strip("`'")))
        else:
            toks.append((kind or "op", text))
    toks.append(("eof", None))
    return toks


# AST nodes are tuples: (kind, ...)
#   ("this",) ("lit", v) ("empty",) ("env", name) ("member", name) ("typefilter", TypeName)
#   ("dot", left, right)  -- right is a member/func node evaluated on left's output
#   ("func", name, args) ("index", base, idx) ("union", a, b) ("as", a, T) ("is", a, T)
#   ("binop", op, a, b)
_BINARY_LEVELS: tuple[frozenset[str], ...] = (
    frozenset({"implies"}),
    frozenset({"or", "xor"}),
    frozenset({"and"}),
    frozenset({"in", "contains"}),
    frozenset({"=", "!=", "~", "!~"}),
    frozenset({"<", ">", "<=", ">="}),
    frozenset({"|"}),
)


class _Parser:
    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.toks = _tokenize(expr)
        self.i = 0

    def peek(self) -> tuple[str, Any]:
        return self.toks[self.i]

    def next(self) -> tuple[str, Any]:
        t = self.toks[self.i]
        self.i += 1
        return t

    def expect(self, value: str) -> None:
        t = self.next()
        if t[1] != value or t[0] not in ("op", "ident"):
            raise UnsupportedExpression(f"expected {value!r} in {self.expr!r}, got {t[1]!r}")

    def parse(self) -> tuple:
        node = self.binary(0)
        if self.peek()[0] != "eof":
            raise UnsupportedExpression(f"unexpected {self.peek()[1]!r} in {self.expr!r}")
        return node

    def _op_at(self, level: int) -> str | None:
        kind, val = self.peek()
        if kind in ("op", "ident") and val in _BINARY_LEVELS[level]:
            return val
        return None

    def binary(self, level: int) -> tuple:
        if level == len(_BINARY_LEVELS):
            return self.type_expr()
        left = self.binary(level + 1)
        while (op := self._op_at(level)) is not None:
            self.next()
            right = self.binary(level + 1)
            left = ("union", left, right) if op == "|" else ("binop", op, left, right)
        return left

    def type_expr(self) -> tuple:
        left = self.additive()
        while self.peek() in (("ident", "as"), ("ident", "is")):
            op = self.next()[1]
            left = (op, left, self.type_name())
        return left

    def additive(self) -> tuple:
        left = self.unary()
        while self.peek()[0] == "op" and self.peek()[1] in ("+", "-", "&"):
            op = self.next()[1]
            left = ("binop", op, left, self.unary())
        return left

    def unary(self) -> tuple:
        if self.peek() == ("op", "-"):
            self.next()
            node = self.postfix()
            if node[0] == "lit" and isinstance(node[1], int | Decimal):
                return ("lit", -node[1])
            raise UnsupportedExpression(f"unary minus in {self.expr!r}")
        return self.postfix()

    def type_name(self) -> str:
        kind, name = self.next()
        if kind != "ident":
            raise UnsupportedExpression(f"expected a type name in {self.expr!r}")
        if self.peek() == ("op", ".") and self.toks[self.i + 1][0] == "ident":  # FHIR.Quantity
            self.next()
            name = self.next()[1]
        return name

    def postfix(self) -> tuple:
        node = self.term()
        while True:
            kind, val = self.peek()
            if kind == "op" and val == ".":
                self.next()
                node = ("dot", node, self.invocation(first=False))
            elif kind == "op" and val == "[":
                self.next()
                idx = self.binary(0)
                self.expect("]")
                node = ("index", node, idx)
            else:
                return node

    def term(self) -> tuple:
        kind, val = self.peek()
        if kind == "lit":
            self.next()
            return ("lit", val)
        if kind == "env":
            self.next()
            return ("env", val)
        if kind == "special":
            self.next()
            if val == "$this":
                return ("this",)
            raise UnsupportedExpression(f"{val} in {self.expr!r}")
        if kind == "op" and val == "(":
            self.next()
            node = self.binary(0)
            self.expect(")")
            return node
        if kind == "op" and val == "{":
            self.next()
            self.expect("}")
            return ("empty",)
        if kind == "ident":
            if val in ("true", "false") and self.toks[self.i + 1] != ("op", "("):
                self.next()
                return ("lit", val == "true")
            return self.invocation(first=True)
        raise UnsupportedExpression(f"unexpected {val!r} in {self.expr!r}")

    def invocation(self, first: bool) -> tuple:
        kind, name = self.next()
        if kind != "ident":
            raise UnsupportedExpression(f"expected a name in {self.expr!r}, got {name!r}")
        if self.peek() == ("op", "("):
            self.next()
            args: list[tuple] = []
            if self.peek() != ("op", ")"):
                if name in ("as", "ofType", "is"):
                    args.append(("type", self.type_name()))
                else:
                    args.append(self.binary(0))
                    while self.peek() == ("op", ","):
                        self.next()
                        args.append(self.binary(0))
            self.expect(")")
            node: tuple = ("func", name, tuple(args))
            return ("dot", ("this",), node) if first else node
        if first and name[:1].isupper():
            return ("typefilter", name)
        member = ("member", name)
        return ("dot", ("this",), member) if first else member


# --------------------------------------------------------------------------------------------
# FHIRPath: evaluation support
# --------------------------------------------------------------------------------------------

# A collection is a list of (value, type) items: value is the JSON value (dict, str, bool, number)
# and type the FHIR type named by a choice element's suffix (valueQuantity -> "Quantity"), or None.
Item = tuple[Any, str | None]
Collection = list[Item]
Compiled = Callable[[Collection, "_Ctx"], Collection]

_PRIMITIVE_TYPES = [
    "base64Binary",
    "boolean",
    "canonical",
    "code",
    "date",
    "dateTime",
    "decimal",
    "id",
    "instant",
    "integer",
    "markdown",
    "oid",
    "positiveInt",
    "string",
    "time",
    "unsignedInt",
    "uri",
    "url",
    "uuid",
    "xhtml",
]
_COMPLEX_TYPES = [
    "Address",
    "Age",
    "Annotation",
    "Attachment",
    "CodeableConcept",
    "Coding",
    "ContactDetail",
    "ContactPoint",
    "Contributor",
    "Count",
    "DataRequirement",
    "Distance",
    "Dosage",
    "Duration",
    "Expression",
    "HumanName",
    "Identifier",
    "Meta",
    "Money",
    "MoneyQuantity",
    "Narrative",
    "ParameterDefinition",
    "Period",
    "Quantity",
    "Range",
    "Ratio",
    "Reference",
    "RelatedArtifact",
    "SampledData",
    "Signature",
    "SimpleQuantity",
    "Timing",
    "TriggerDefinition",
    "UsageContext",
]
# Suffix of a choice element's JSON key -> FHIR type name.
_CHOICE_SUFFIXES: dict[str, str] = {t[0].upper() + t[1:]: t for t in _PRIMITIVE_TYPES}
_CHOICE_SUFFIXES.update({t: t for t in _COMPLEX_TYPES})
_SUBTYPES: dict[str, frozenset[str]] = {
    "quantity": frozenset({"age", "count", "distance", "duration", "moneyquantity", "simplequantity"}),
    "string": frozenset({"code", "id", "markdown"}),
    "uri": frozenset({"url", "canonical", "oid", "uuid"}),
    "integer": frozenset({"positiveint", "unsignedint"}),
    "decimal": frozenset({"integer", "positiveint", "unsignedint"}),
    "datetime": frozenset({"instant"}),
}
_STRINGISH = frozenset(t.lower() for t in _PRIMITIVE_TYPES) - {
    "boolean",
    "integer",
    "decimal",
    "positiveint",
    "unsignedint",
}
_KEY_SPLITS: dict[str, tuple[str, str] | None] = {}


def _split_choice_key(key: str) -> tuple[str, str] | None:
    """'valueQuantity' -> ('value', 'Quantity'); None if the key has no type suffix."""
    try:
        return _KEY_SPLITS[key]
    except KeyError:
        pass
    res = None
    if not key.startswith("_"):
        for i in range(1, len(key)):
            if key[i].isupper() and key[i:] in _CHOICE_SUFFIXES:
                res = (key[:i], _CHOICE_SUFFIXES[key[i:]])
                break
    if len(_KEY_SPLITS) < 100_000:
        _KEY_SPLITS[key] = res
    return res


class _Resolved:
    """What resolve() yields: only the target's resource type is known."""

    __slots__ = ("resource_type",)

    def __init__(self, resource_type: str) -> None:
        self.resource_type = resource_type


class _Ctx:
    """Per-evaluation state: the root resource and caches keyed by id() of its (live) elements."""

    __slots__ = ("choices", "converted", "root")

    def __init__(self, root: Any) -> None:
        self.root = root
        self.choices: dict[int, dict[str, tuple[str, str]]] = {}
        # (id(element), converter) -> values: the same element (Observation.code, say) feeds many
        # parameters.
        self.converted: dict[tuple[int, Any], list] = {}

    def choice_map(self, d: dict) -> dict[str, tuple[str, str]]:
        m = self.choices.get(id(d))
        if m is None:
            m = {}
            for k in d:
                s = _split_choice_key(k)
                if s is not None:
                    m[s[0]] = (k, s[1])
            self.choices[id(d)] = m
        return m


@cache
def _type_matches(actual: str, wanted: str) -> bool:
    a, w = actual.lower(), wanted.lower()
    return a == w or a in _SUBTYPES.get(w, ())


def _is_type(value: Any, hint: str | None, wanted: str) -> bool:
    if hint is not None:
        return _type_matches(hint, wanted)
    cls = value.__class__
    if cls is dict:
        rt = value.get("resourceType")
        if rt is not None:
            return rt == wanted or wanted in _ABSTRACT_BASES
        return wanted[:1].isupper()  # an element of undeclared complex type: be lenient
    if cls is _Resolved:
        return value.resource_type == wanted or wanted in _ABSTRACT_BASES
    if cls is bool:
        return wanted.lower() == "boolean"
    if cls is str:
        return wanted.lower() in _STRINGISH
    if cls is int:
        return wanted.lower() in ("integer", "decimal", "positiveint", "unsignedint")
    if cls is float or cls is Decimal:
        return wanted.lower() == "decimal"
    return False


def _eq(a: Any, b: Any) -> bool:
    if (a.__class__ is bool) is not (b.__class__ is bool):
        return False
    return bool(a == b)


def _truth(coll: Collection) -> bool | None:
    """FHIRPath singleton evaluation of a collection used as a boolean (None = empty)."""
    if not coll:
        return None
    if len(coll) == 1 and coll[0][0].__class__ is bool:
        return coll[0][0]
    return True


# --------------------------------------------------------------------------------------------
# FHIRPath: compilation to closures
# --------------------------------------------------------------------------------------------

_EMPTY: tuple = ("empty",)
# Functions that give an empty result for an empty input (so a statically empty input prunes).
_EMPTY_PRESERVING = frozenset({"where", "as", "ofType", "resolve", "first", "last", "extension", "is"})


def _specialize(node: tuple, rtype: str | None) -> tuple:
    """Resolve root type filters for `rtype` and prune what becomes statically empty."""
    kind = node[0]
    if kind == "typefilter":
        if rtype is None:
            return node
        name = node[1]
        if (
            name == rtype
            or name == "Resource"
            or (name == "DomainResource" and rtype not in _NOT_DOMAIN_RESOURCES)
        ):
            return ("this",)
        return _EMPTY
    if kind == "dot":
        left = _specialize(node[1], rtype)
        right = node[2]
        if left is _EMPTY and (
            right[0] == "member" or (right[0] == "func" and right[1] in _EMPTY_PRESERVING)
        ):
            return _EMPTY
        return ("dot", left, right)
    if kind == "union":
        a, b = _specialize(node[1], rtype), _specialize(node[2], rtype)
        if a is _EMPTY:
            return b
        if b is _EMPTY:
            return a
        return ("union", a, b)
    if kind in ("as", "is"):
        inner = _specialize(node[1], rtype)
        return _EMPTY if inner is _EMPTY else (kind, inner, node[2])
    if kind == "index":
        inner = _specialize(node[1], rtype)
        return _EMPTY if inner is _EMPTY else ("index", inner, node[2])
    if kind == "binop":
        return ("binop", node[1], _specialize(node[2], rtype), _specialize(node[3], rtype))
    return node


def _flatten_dots(node: tuple) -> list[tuple]:
    """dot(dot(a, b), c) -> [a, b, c]."""
    chain: list[tuple] = []
    while node[0] == "dot":
        chain.append(node[2])
        node = node[1]
    chain.append(node)
    chain.reverse()
    return chain


def _member_items(v: dict, name: str, ctx: _Ctx, out: Collection) -> None:
    x = v.get(name)
    hint = None
    if x is None:
        m = ctx.choices.get(id(v))
        e = (m if m is not None else ctx.choice_map(v)).get(name)
        if e is None:
            return
        x = v[e[0]]
        if x is None:
            return
        hint = e[1]
    if x.__class__ is list:
        out.extend([(i, hint) for i in x if i is not None])
    else:
        out.append((x, hint))


def _members_fn(names: tuple[str, ...]) -> Compiled:
    if len(names) == 1:
        name = names[0]

        def member(coll: Collection, ctx: _Ctx) -> Collection:
            out: Collection = []
            for v, _h in coll:
                if v.__class__ is dict:
                    _member_items(v, name, ctx, out)
            return out

        return member

    def members(coll: Collection, ctx: _Ctx) -> Collection:
        for name in names:
            out: Collection = []
            for v, _h in coll:
                if v.__class__ is dict:
                    _member_items(v, name, ctx, out)
            if not out:
                return out
            coll = out
        return coll

    return members


def _this(coll: Collection, ctx: _Ctx) -> Collection:
    return coll


def _empty(coll: Collection, ctx: _Ctx) -> Collection:
    return []


def _typefilter_fn(name: str) -> Compiled:
    def typefilter(coll: Collection, ctx: _Ctx) -> Collection:
        return [
            it
            for it in coll
            if it[0].__class__ is dict
            and (rt := it[0].get("resourceType")) is not None
            and (
                rt == name
                or name == "Resource"
                or (name == "DomainResource" and rt not in _NOT_DOMAIN_RESOURCES)
            )
        ]

    return typefilter


def _resolve_type(value: Any, ctx: _Ctx) -> str | None:
    ref = value.get("reference") if value.__class__ is dict else value if value.__class__ is str else None
    if not isinstance(ref, str):
        return None
    if ref.startswith("#"):
        for c in ctx.root.get("contained", ()) if ctx.root.__class__ is dict else ():
            if isinstance(c, dict) and c.get("id") == ref[1:]:
                return c.get("resourceType")
        return None
    parsed = _parse_literal_reference(ref)
    return parsed[0] if parsed else None


def _compile_func(name: str, args: tuple[tuple, ...], expr: str) -> Compiled:
    nargs = len(args)

    def need(n: int) -> None:
        if nargs != n:
            raise UnsupportedExpression(f"{name}() with {nargs} arguments in {expr!r}")

    if name in ("as", "ofType"):
        need(1)
        tname = args[0][1]
        return lambda coll, ctx: [it for it in coll if _is_type(it[0], it[1], tname)]
    if name == "is":
        need(1)
        tname = args[0][1]
        return lambda coll, ctx: [(_is_type(coll[0][0], coll[0][1], tname), None)] if len(coll) == 1 else []
    if name == "where":
        need(1)
        crit = _compile(args[0], None, expr)

        def where(coll: Collection, ctx: _Ctx) -> Collection:
            return [it for it in coll if _truth(crit([it], ctx)) is True]

        return where
    if name == "exists":
        if nargs == 0:
            return lambda coll, ctx: [(bool(coll), None)]
        need(1)
        crit = _compile(args[0], None, expr)
        return lambda coll, ctx: [(any(_truth(crit([it], ctx)) is True for it in coll), None)]
    if name == "empty":
        need(0)
        return lambda coll, ctx: [(not coll, None)]
    if name == "not":
        need(0)

        def not_(coll: Collection, ctx: _Ctx) -> Collection:
            t = _truth(coll)
            return [] if t is None else [(not t, None)]

        return not_
    if name == "hasValue":
        need(0)
        return lambda coll, ctx: [(len(coll) == 1 and coll[0][0].__class__ is not dict, None)]
    if name == "count":
        need(0)
        return lambda coll, ctx: [(len(coll), None)]
    if name == "first":
        need(0)
        return lambda coll, ctx: coll[:1]
    if name == "last":
        need(0)
        return lambda coll, ctx: coll[-1:]
    if name == "resolve":
        need(0)

        def resolve(coll: Collection, ctx: _Ctx) -> Collection:
            out: Collection = []
            for v, _h in coll:
                t = _resolve_type(v, ctx)
                if t is not None:
                    out.append((_Resolved(t), None))
            return out

        return resolve
    if name == "extension":
        need(1)
        if args[0][0] != "lit" or not isinstance(args[0][1], str):
            raise UnsupportedExpression(f"extension() needs a literal url in {expr!r}")
        url = args[0][1]

        def extension(coll: Collection, ctx: _Ctx) -> Collection:
            out: Collection = []
            for v, _h in coll:
                if v.__class__ is dict:
                    out.extend((x, None) for x in v.get("extension", ()) if x.get("url") == url)
            return out

        return extension
    raise UnsupportedExpression(f"function {name}() in {expr!r}")


def _compile_binop(op: str, a: Compiled, b: Compiled, expr: str) -> Compiled:
    if op in ("=", "!="):
        negate = op == "!="

        def equality(coll: Collection, ctx: _Ctx) -> Collection:
            x, y = a(coll, ctx), b(coll, ctx)
            if not x or not y:
                return []
            same = len(x) == len(y) and all(_eq(p[0], q[0]) for p, q in zip(x, y, strict=True))
            return [(same is not negate, None)]

        return equality
    if op in ("<", ">", "<=", ">="):

        def compare(coll: Collection, ctx: _Ctx) -> Collection:
            x, y = a(coll, ctx), b(coll, ctx)
            if len(x) != 1 or len(y) != 1:
                return []
            try:
                p, q = x[0][0], y[0][0]
                r = p < q if op == "<" else p > q if op == ">" else p <= q if op == "<=" else p >= q
            except TypeError:
                return []
            return [(r, None)]

        return compare
    if op in ("and", "or", "xor", "implies"):

        def logic(coll: Collection, ctx: _Ctx) -> Collection:
            x = _truth(a(coll, ctx))
            if op == "and" and x is False:
                return [(False, None)]
            if op == "or" and x is True:
                return [(True, None)]
            if op == "implies" and x is False:
                return [(True, None)]
            y = _truth(b(coll, ctx))
            if op == "and":
                r = False if y is False else (True if x is True and y is True else None)
            elif op == "or":
                r = True if y is True else (False if x is False and y is False else None)
            elif op == "xor":
                r = None if x is None or y is None else x is not y
            else:  # implies, x is True or None
                r = True if y is True else (None if x is None else y)
            return [] if r is None else [(r, None)]

        return logic
    raise UnsupportedExpression(f"operator {op!r} in {expr!r}")


def _compile(node: tuple, rtype: str | None, expr: str) -> Compiled:
    kind = node[0]
    if kind == "this":
        return _this
    if kind == "empty":
        return _empty
    if kind == "lit":
        lit: Collection = [(node[1], None)]
        return lambda coll, ctx: lit
    if kind == "env":
        name = node[1]
        if name in ("resource", "rootResource", "context"):
            return lambda coll, ctx: [(ctx.root, None)]
        if name == "ucum":
            ucum: Collection = [("http://unitsofmeasure.org", None)]
            return lambda coll, ctx: ucum
        raise UnsupportedExpression(f"%{name} in {expr!r}")
    if kind == "typefilter":
        return _typefilter_fn(node[1])
    if kind == "member":
        return _members_fn((node[1],))
    if kind == "dot":
        chain = _flatten_dots(node)
        steps: list[tuple[Compiled, bool]] = []  # (function, gives empty for empty input)
        head = chain[0]
        if head[0] != "this":
            steps.append((_compile(head, rtype, expr), head[0] not in ("lit", "env", "binop", "is")))
        names: list[str] = []
        for step in chain[1:]:
            if step[0] == "member":
                names.append(step[1])
                continue
            if names:
                steps.append((_members_fn(tuple(names)), True))
                names = []
            if step[0] != "func":
                raise UnsupportedExpression(f"unexpected {step[0]} in {expr!r}")
            steps.append((_compile_func(step[1], step[2], expr), step[1] in _EMPTY_PRESERVING))
        if names:
            steps.append((_members_fn(tuple(names)), True))
        if not steps:
            return _this
        if len(steps) == 1:
            return steps[0][0]
        # An empty collection can stop the chain once only empty-preserving steps remain.
        plan = tuple((f, all(p for _f, p in steps[i:])) for i, (f, _p) in enumerate(steps))
        if len(plan) == 2 and plan[1][1]:
            f1, f2 = plan[0][0], plan[1][0]

            def chain2(coll: Collection, ctx: _Ctx) -> Collection:
                coll = f1(coll, ctx)
                return f2(coll, ctx) if coll else coll

            return chain2

        def chain_n(coll: Collection, ctx: _Ctx) -> Collection:
            for f, can_stop in plan:
                if can_stop and not coll:
                    return coll
                coll = f(coll, ctx)
            return coll

        return chain_n
    if kind == "union":
        parts: list[Compiled] = []
        stack = [node]
        while stack:  # flatten nested unions, keeping left-to-right order
            n = stack.pop()
            if n[0] == "union":
                stack.append(n[2])
                stack.append(n[1])
            else:
                parts.append(_compile(n, rtype, expr))
        parts_t = tuple(parts)

        def union(coll: Collection, ctx: _Ctx) -> Collection:
            out: Collection = []
            for f in parts_t:
                out.extend(f(coll, ctx))
            return out

        return union
    if kind in ("as", "is"):
        inner = _compile(node[1], rtype, expr)
        tname = node[2]
        if kind == "as":
            return lambda coll, ctx: [it for it in inner(coll, ctx) if _is_type(it[0], it[1], tname)]

        def is_(coll: Collection, ctx: _Ctx) -> Collection:
            r = inner(coll, ctx)
            return [(_is_type(r[0][0], r[0][1], tname), None)] if len(r) == 1 else []

        return is_
    if kind == "index":
        inner = _compile(node[1], rtype, expr)
        if node[2][0] != "lit" or not isinstance(node[2][1], int):
            raise UnsupportedExpression(f"non-literal indexer in {expr!r}")
        idx = node[2][1]
        return lambda coll, ctx: inner(coll, ctx)[idx : idx + 1]
    if kind == "binop":
        return _compile_binop(node[1], _compile(node[2], rtype, expr), _compile(node[3], rtype, expr), expr)
    raise UnsupportedExpression(f"{kind} in {expr!r}")


@lru_cache(maxsize=8192)
def _parse(expr: str) -> tuple:
    return _Parser(expr).parse()


@lru_cache(maxsize=16384)
def _compiled(expr: str, rtype: str | None) -> Compiled | None:
    """Compile `expr` for evaluation on a `rtype` resource (None: generic); None if always empty."""
    node = _specialize(_parse(expr), rtype)
    if node is _EMPTY:
        return None
    return _compile(node, rtype, expr)


def compile_expression(expr: str, resource_type: str | None = None) -> Callable[[Any], list[Any]]:
    """Compile a FHIRPath expression (of the supported subset) into ``f(resource) -> values``.

    With `resource_type`, union branches rooted at other resource types are pruned. Raises
    :class:`UnsupportedExpression` for anything outside the subset.
    """
    fn = _compiled(expr, resource_type)
    if fn is None:
        return lambda resource: []

    def run(resource: Any) -> list[Any]:
        return [v for v, _h in fn([(resource, None)], _Ctx(resource))]

    return run


def evaluate(expr: str, resource: Mapping[str, Any]) -> list[Any]:
    """Evaluate a FHIRPath expression on a resource; returns the matched JSON values."""
    return compile_expression(expr, resource.get("resourceType"))(resource)


def unsupported_expressions() -> dict[str, str]:
    """Expressions (and composite component expressions) in the definitions that fail to compile."""
    bad: dict[str, str] = {}
    for p in _registry().by_url.values():
        exprs = [p.expression] if p.expression else []
        exprs.extend(c.expression for c in p.components)
        for e in exprs:
            try:
                _compiled(e, None)
            except UnsupportedExpression as exc:
                bad[e] = str(exc)
    return bad


# --------------------------------------------------------------------------------------------
# Value conversion
# --------------------------------------------------------------------------------------------

_CONTACT_POINT_SYSTEMS = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})
_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_ISO4217 = "urn:iso:std:iso:4217"
_NEG_INF = Decimal("-Infinity")
_POS_INF = Decimal("Infinity")


def normalize_string(s: str) -> str:
    """Case- and accent-insensitive form for string search: casefold, strip diacritics, collapse
    whitespace (shared by indexing and search)."""
    if s.isascii():
        return " ".join(s.lower().split())
    s = unicodedata.normalize("NFKD", s.casefold())
    s = "".join(c for c in s if not unicodedata.combining(c))
    return " ".join(s.split())


def _parse_literal_reference(ref: str) -> tuple[str, str] | None:
    """'Patient/1', 'http://x/fhir/Patient/1/_history/2' -> ('Patient', '1'); else None."""
    if ref.startswith(("urn:", "#")) or "?" in ref:
        return None
    parts = ref.rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 2:
        return None
    rtype, rid = parts[-2], parts[-1]
    if rtype in _registry().resource_types and _ID_RE.match(rid):
        return rtype, rid
    return None


def _str_or_none(v: Any) -> str | None:
    return v if isinstance(v, str) and v != "" else None


# A converter appends the search values of one matched element (value, choice type) to a list.
_Converter = Callable[[Any, str | None, list[SimpleValue]], None]

# ---- token


def _coding_token(d: dict, text: str | None = None) -> TokenValue | None:
    system, code = _str_or_none(d.get("system")), _str_or_none(d.get("code"))
    display = _str_or_none(d.get("display")) or text
    if system is None and code is None and display is None:
        return None
    return TokenValue(system, code, display)


def _token_values(v: Any, hint: str | None, out: list[SimpleValue]) -> None:
    cls = v.__class__
    if cls is str:
        if v:
            out.append(TokenValue(None, v))
        return
    if cls is bool:
        out.append(TokenValue(None, "true" if v else "false"))
        return
    if cls is int or cls is Decimal or cls is float:
        out.append(TokenValue(None, str(v)))
        return
    if cls is not dict:
        return
    if hint is None:
        if "coding" in v:
            hint = "CodeableConcept"
        elif v.get("system") in _CONTACT_POINT_SYSTEMS and "code" not in v:
            hint = "ContactPoint"  # (a Coding or Identifier system is a URI, never "phone")
        elif "value" in v or "type" in v or "assigner" in v:
            hint = "Identifier"
        elif "code" in v or "system" in v or "display" in v:
            hint = "Coding"
        elif "text" in v:
            hint = "CodeableConcept"
        else:
            return
    if hint == "CodeableConcept":
        for c in v.get("coding", ()):
            if isinstance(c, dict) and (t := _coding_token(c)) is not None:
                out.append(t)
        if text := _str_or_none(v.get("text")):
            out.append(TokenValue(None, None, text))
    elif hint == "Coding":
        if (t := _coding_token(v)) is not None:
            out.append(t)
    elif hint == "Identifier":
        system, value = _str_or_none(v.get("system")), _str_or_none(v.get("value"))
        if system is not None or value is not None:
            typ = v.get("type")
            out.append(
                TokenValue(system, value, _str_or_none(typ.get("text")) if isinstance(typ, dict) else None)
            )
    elif hint == "ContactPoint" and (value := _str_or_none(v.get("value"))):
        out.append(TokenValue(_str_or_none(v.get("system")), value))


# ---- string

_HUMAN_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
_ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")


def _string_values(v: Any, hint: str | None, out: list[SimpleValue]) -> None:
    if v.__class__ is str:
        if v:
            out.append(StringValue(v))
        return
    if v.__class__ is not dict:
        return
    if hint == "HumanName" or (hint is None and ("family" in v or "given" in v)):
        parts: Iterable[str] = _HUMAN_NAME_PARTS
    elif hint == "Address" or (
        hint is None and ("line" in v or "city" in v or "postalCode" in v or "country" in v)
    ):
        parts = _ADDRESS_PARTS
    elif hint is None and ("prefix" in v or "suffix" in v):
        parts = _HUMAN_NAME_PARTS
    elif hint is None and ("district" in v or "state" in v):
        parts = _ADDRESS_PARTS
    elif hint is None and "text" in v and len(v.keys() - {"text", "use", "period", "id", "extension"}) == 0:
        parts = ("text",)  # a HumanName/Address with only text
    else:
        return
    for p in parts:
        x = v.get(p)
        if x.__class__ is list:
            out.extend(StringValue(s) for s in x if isinstance(s, str) and s)
        elif isinstance(x, str) and x:
            out.append(StringValue(x))


# ---- reference


def _reference_values(v: Any, hint: str | None, out: list[SimpleValue]) -> None:
    if v.__class__ is str:
        if v:
            out.append(ReferenceValue(None, None, v.split("|", 1)[0]))
        return
    if v.__class__ is not dict or "resourceType" in v:
        return
    ref = _str_or_none(v.get("reference"))
    ident = v.get("identifier")
    isys = ival = None
    if isinstance(ident, dict):
        isys, ival = _str_or_none(ident.get("system")), _str_or_none(ident.get("value"))
    if ref is not None and ref.startswith("#"):
        ref = None  # contained: not indexed
    if ref is None:
        if isys is not None or ival is not None:
            out.append(ReferenceValue(None, None, None, isys, ival))
        return
    parsed = _parse_literal_reference(ref)
    if parsed is None:
        out.append(ReferenceValue(None, None, ref, isys, ival))
    else:
        out.append(ReferenceValue(parsed[0], parsed[1], ref, isys, ival))


# ---- date


def _period_value(p: dict) -> DateValue | None:
    start, end = p.get("start"), p.get("end")
    low = high = None
    if isinstance(start, str) and (r := fhir_date_range(start)) is not None:
        low = r[0]
    if isinstance(end, str) and (r := fhir_date_range(end)) is not None:
        high = r[1]
    if low is None and high is None:
        return None
    return DateValue(low, high)


def _date_values(v: Any, hint: str | None, out: list[SimpleValue]) -> None:
    if v.__class__ is str:
        if (r := fhir_date_range(v)) is not None:
            out.append(DateValue(r[0], r[1]))
        return
    if v.__class__ is not dict:
        return
    if hint == "Period" or (hint is None and ("start" in v or "end" in v)):
        if (pv := _period_value(v)) is not None:
            out.append(pv)
    elif hint == "Timing" or (hint is None and ("event" in v or "repeat" in v)):
        for e in v.get("event", ()):
            if isinstance(e, str) and (r := fhir_date_range(e)) is not None:
                out.append(DateValue(r[0], r[1]))
        repeat = v.get("repeat")
        bounds = repeat.get("boundsPeriod") if isinstance(repeat, dict) else None
        if isinstance(bounds, dict) and (pv := _period_value(bounds)) is not None:
            out.append(pv)


# ---- number / quantity


def _to_decimal(x: Any) -> Decimal | None:
    cls = x.__class__
    if cls is Decimal:
        return x if x.is_finite() else None
    if cls is int:
        return Decimal(x)
    if cls is float:
        try:
            d = Decimal(repr(x))
        except InvalidOperation:
            return None
        return d if d.is_finite() else None
    if cls is str:
        try:
            d = Decimal(x)
        except InvalidOperation:
            return None
        return d if d.is_finite() else None
    return None


def _precision_range(d: Decimal) -> tuple[Decimal, Decimal]:
    """Half-open implicit-precision range: 100 -> [99.5, 100.5), 5.4 -> [5.35, 5.45)."""
    exp = d.as_tuple().exponent
    half = Decimal((0, (5,), int(exp) - 1))
    return d - half, d + half


def _range_bounds(v: dict) -> tuple[Decimal, Decimal, Decimal, dict] | None:
    """Range -> (value, low, high, the Quantity giving the units), or None if empty."""
    lowq, highq = v.get("low"), v.get("high")
    lv = _to_decimal(lowq.get("value")) if isinstance(lowq, dict) else None
    hv = _to_decimal(highq.get("value")) if isinstance(highq, dict) else None
    if lv is None and hv is None:
        return None
    low = _precision_range(lv)[0] if lv is not None else _NEG_INF
    high = _precision_range(hv)[1] if hv is not None else _POS_INF
    unit_q = lowq if lv is not None else highq
    return (lv if lv is not None else hv), low, high, unit_q  # type: ignore[return-value]


def _number_values(v: Any, hint: str | None, out: list[SimpleValue]) -> None:
    if v.__class__ is dict:
        if hint == "Range" or (hint is None and ("low" in v or "high" in v)):
            if (rb := _range_bounds(v)) is not None:
                out.append(NumberValue(rb[0], rb[1], rb[2]))
            return
        v = v.get("value")
    if v.__class__ is bool:
        return
    d = _to_decimal(v)
    if d is not None:
        low, high = _precision_range(d)
        out.append(NumberValue(d, low, high))


def _quantity_values(v: Any, hint: str | None, out: list[SimpleValue]) -> None:
    if v.__class__ is not dict:
        if v.__class__ is not bool and (d := _to_decimal(v)) is not None:
            low, high = _precision_range(d)
            out.append(QuantityValue(d, low, high, None, None, None))
        return
    if hint == "Range" or (hint is None and ("low" in v or "high" in v)):
        if (rb := _range_bounds(v)) is not None:
            q = rb[3]
            out.append(
                QuantityValue(
                    rb[0],
                    rb[1],
                    rb[2],
                    _str_or_none(q.get("system")),
                    _str_or_none(q.get("code")),
                    _str_or_none(q.get("unit")),
                )
            )
        return
    if hint == "SampledData" or (hint is None and "origin" in v):
        return
    d = _to_decimal(v.get("value"))
    if d is None or v.get("value").__class__ is bool:
        return
    low, high = _precision_range(d)
    if hint == "Money" or (hint is None and "currency" in v):
        out.append(QuantityValue(d, low, high, _ISO4217, _str_or_none(v.get("currency")), None))
    else:
        out.append(
            QuantityValue(
                d,
                low,
                high,
                _str_or_none(v.get("system")),
                _str_or_none(v.get("code")),
                _str_or_none(v.get("unit")),
            )
        )


# ---- uri


def _uri_values(v: Any, hint: str | None, out: list[SimpleValue]) -> None:
    if v.__class__ is str and v:
        out.append(UriValue(v))


_CONVERTERS: dict[str, _Converter] = {
    "token": _token_values,
    "string": _string_values,
    "reference": _reference_values,
    "date": _date_values,
    "number": _number_values,
    "quantity": _quantity_values,
    "uri": _uri_values,
}


def _convert(conv: _Converter, coll: Collection, ctx: _Ctx) -> list[SimpleValue]:
    memo = ctx.converted
    if len(coll) == 1:
        v, h = coll[0]
        key = (id(v), conv)
        r = memo.get(key)
        if r is None:
            r = memo[key] = []
            conv(v, h, r)
        return r
    out: list[SimpleValue] = []
    for v, h in coll:
        key = (id(v), conv)
        r = memo.get(key)
        if r is None:
            r = memo[key] = []
            conv(v, h, r)
        out.extend(r)
    return out


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------

_Extractor = Callable[[Collection, _Ctx], list[Any]]


def _make_extractor(param: SearchParamDef, rtype: str) -> _Extractor | None:
    if param.expression is None or param.type == "special":
        return None
    fn = _compiled(param.expression, rtype)
    if fn is None:
        return None
    if param.type != "composite":
        conv = _CONVERTERS[param.type]

        def simple(root: Collection, ctx: _Ctx) -> list[Any]:
            coll = fn(root, ctx)
            return _convert(conv, coll, ctx) if coll else []

        return simple
    comps: list[tuple[Compiled, _Converter]] = []
    for c in param.components:
        cfn = _compiled(c.expression, None)
        if cfn is None:
            return None
        comps.append((cfn, _CONVERTERS[c.param.type]))

    def composite(root: Collection, ctx: _Ctx) -> list[Any]:
        out: list[Any] = []
        for item in fn(root, ctx):
            parts: list[tuple[SimpleValue, ...]] = []
            for cfn, conv in comps:
                vals = _convert(conv, cfn([item], ctx), ctx)
                if not vals:
                    break
                parts.append(tuple(dict.fromkeys(vals)))
            else:
                out.append(CompositeValue(tuple(parts)))
        return out

    return composite


@cache
def _extractors(resource_type: str, indexed: bool = False) -> tuple[tuple[str, _Extractor], ...]:
    out = []
    # Union parameters have no index rows of their own (`UNION_PARAMS`).
    skipped = UNION_PARAMS.get(resource_type, {}) if indexed else {}
    for code, p in search_params_for(resource_type).items():
        if code in COLUMN_PARAMS or code in skipped:
            continue
        ex = _make_extractor(p, resource_type)
        if ex is not None:
            out.append((code, ex))
    return tuple(out)


def extract_search_values(
    resource: Mapping[str, Any], *, indexed: bool = False
) -> dict[str, list[SearchValue]]:
    """Search values of `resource` (parsed JSON: dicts, lists, str, numbers) by parameter code.

    Every parameter of the resource's type that yields a value is present; with `indexed`, what
    the index tables store: the union parameters (`UNION_PARAMS`, whose values are their
    members') are left out, and parameters with subsets (`SUBSET_PARAMS`) keep only the values
    no subset holds.

    ``_id``/``_lastUpdated``, ``special`` parameters and parameters without an expression are
    skipped; values are de-duplicated per parameter, in document order. An unknown or missing
    ``resourceType`` gives an empty dict.
    """
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or rtype not in _registry().resource_types:
        return {}
    ctx = _Ctx(resource)
    root: Collection = [(resource, None)]
    result: dict[str, list[SearchValue]] = {}
    for code, ex in _extractors(rtype, indexed):
        vals = ex(root, ctx)
        if vals:
            result[code] = list(dict.fromkeys(vals)) if len(vals) > 1 else list(vals)
    if indexed:
        for code, subsets in SUBSET_PARAMS.get(rtype, {}).items():
            if code in result:
                held = {value for subset in subsets for value in result.get(subset, ())}
                rest = [value for value in result[code] if value not in held]
                if rest:
                    result[code] = rest
                else:
                    del result[code]
    return result


def extract_param_values(param: SearchParamDef, resource: Mapping[str, Any]) -> list[SearchValue]:
    """Search values of `resource` for one parameter (which may be of any base type)."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or rtype not in _registry().resource_types:
        return []
    ex = _make_extractor(param, rtype)
    if ex is None:
        return []
    vals = ex([(resource, None)], _Ctx(resource))
    return list(dict.fromkeys(vals))
