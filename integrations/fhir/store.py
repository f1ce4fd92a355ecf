"""The FHIR store's business operations: one function per interaction, each atomic.

Every part of the server (the REST API, Bundles, DICOM, HL7, the AI pipeline) writes clinical data
through these functions, so validation, versioning, referential integrity and search indexing
happen the same way whatever the entry point.

Contract shared by all writes:
- the resource is validated first (`validation.validate_resource`); nothing is written when any
  check fails, and the raised `FhirError` says what was wrong. The one exception is a caller that
  built the resource from values it checked itself and says so (`checked=True` on create and
  update: the HL7 v2 interface's Patients, whose mapping tests hold to validating output): the
  model validation costs more than the rest of such a write's Python;
- each write makes a new version: `meta.versionId` counts from 1, `meta.lastUpdated` is the commit
  time (millisecond precision, UTC), and every version is kept in `ResourceVersion`;
- relative references (`Patient/123`) must name an existing, non-deleted resource (like HAPI's
  referential integrity on write); `urn:uuid:` and contained references are left to the caller;
- search index rows are replaced in the same transaction, so a search never sees a half-written
  resource;
- the post-write hooks of the type (`hooks.py`) run after each create or update, in the same
  transaction (deletions run none);
- inside a caller's transaction a write is a savepoint, so a caller may catch its error and go on;
  `create_resource` and `update_resource` take `savepoint=False` for callers that roll their whole
  transaction back on any error instead (two round trips fewer).
"""

from __future__ import annotations

import functools
import hashlib
import uuid
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import jsonpatch
import orjson
from django.db import connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from btt_health import prepared
from integrations.fhir import hooks, indexing
from integrations.fhir.models import ResourceRecord, ResourceVersion
from integrations.fhir.outcomes import FhirError, Issue, gone, not_found
from integrations.fhir.validation import ID_PATTERN, check_resource_type, validate_resource

Method = ResourceVersion.Method


@dataclass(frozen=True)
class StoredResource:
    """One version of a resource as stored: its JSON text and the metadata the HTTP layer needs."""

    resource_type: str
    logical_id: str
    version_id: int
    last_updated: datetime
    deleted: bool
    text: str

    @property
    def etag(self) -> str:
        return f'W/"{self.version_id}"'

    def as_dict(self) -> dict:
        return orjson.loads(self.text)

    @classmethod
    def of(cls, row: ResourceRecord | ResourceVersion) -> StoredResource:
        return cls(
            resource_type=row.resource_type,
            logical_id=row.logical_id,
            version_id=row.version_id,
            last_updated=row.last_updated,
            deleted=row.deleted,
            text=row.text,
        )


@dataclass(frozen=True)
class WriteResult:
    """What a write did: `created` (201) or not (200), and the version now current."""

    stored: StoredResource
    created: bool
    # Conditional create that matched an existing resource: nothing was written.
    existing: bool = False


# A write's `then` (see `create_resource`): called with the written resource's logical id, it gives
# the statements to send after the write's own in the same round trip, or None.
Then = Callable[[str], "tuple[str, list] | None"]


def format_instant(moment: datetime) -> str:
    """A FHIR instant in UTC with millisecond precision, as written into meta.lastUpdated."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _now() -> datetime:
    moment = timezone.now()
    # Kept to milliseconds so the stored column equals meta.lastUpdated exactly.
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def new_logical_id() -> str:
    return str(uuid.uuid4())


def _stamp(resource: dict, logical_id: str, version_id: int, moment: datetime) -> dict:
    """The resource with id and meta set, keys ordered resourceType, id, meta, then the rest."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version_id)
    meta["lastUpdated"] = format_instant(moment)
    stamped = {"resourceType": resource["resourceType"], "id": logical_id, "meta": meta}
    for key, value in resource.items():
        if key not in stamped:
            stamped[key] = value
    return stamped


def _dumps(resource: dict) -> str:
    return orjson.dumps(resource).decode()


# --- referential integrity --------------------------------------------------------------------


def iter_references(resource: dict, path: str | None = None) -> Iterable[tuple[str, str]]:
    """(FHIRPath of the element, reference string) for every Reference.reference in `resource`."""
    stack: list[tuple[str, object]] = [(path or resource.get("resourceType", ""), resource)]
    while stack:
        here, node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("reference")
            if isinstance(ref, str):
                yield here, ref
            for key, value in node.items():
                if key != "contained" and isinstance(value, dict | list):
                    stack.append((f"{here}.{key}", value))
        elif isinstance(node, list):
            for index, item in enumerate(node):
                if isinstance(item, dict | list):
                    stack.append((f"{here}[{index}]", item))


def parse_relative_reference(reference: str) -> tuple[str, str] | None:
    """('Patient', '123') for 'Patient/123' or 'Patient/123/_history/2'; None for other forms."""
    parts = reference.split("/")
    if len(parts) in (2, 4) and (len(parts) == 2 or parts[2] == "_history"):
        resource_type, logical_id = parts[0], parts[1]
        if resource_type[:1].isupper() and ID_PATTERN.match(logical_id):
            return resource_type, logical_id
    return None


def check_references(resources: list[dict], *, also_present: set[tuple[str, str]] | None = None) -> None:
    """Raise FhirError naming each relative reference whose target does not exist (or is deleted).

    `also_present` holds (type, id) pairs being written in the same transaction.
    """
    wanted: dict[tuple[str, str], str] = {}
    for resource in resources:
        for element, reference in iter_references(resource):
            target = parse_relative_reference(reference)
            if target is not None and target not in wanted:
                wanted[target] = element
    if also_present:
        for target in also_present:
            wanted.pop(target, None)
    if not wanted:
        return
    ids_by_type: dict[str, list[str]] = defaultdict(list)
    for resource_type, logical_id in wanted:
        ids_by_type[resource_type].append(logical_id)
    found: set[tuple[str, str]] = set()
    for resource_type, ids in ids_by_type.items():
        found.update(
            ResourceRecord.objects.filter(
                resource_type=resource_type, logical_id__in=ids, deleted=False
            ).values_list("resource_type", "logical_id")
        )
    missing = [(target, element) for target, element in wanted.items() if target not in found]
    if missing:
        raise FhirError(
            400,
            [
                # HAPI answers the same case with 400 "Resource X not found, specified in path: ..."
                _issue_missing_reference(f"{t}/{i}", element)
                for (t, i), element in missing
            ],
        )


def _issue_missing_reference(reference: str, element: str) -> Issue:
    return Issue(
        code="not-found",
        diagnostics=f"{element}.reference: the referenced resource {reference} does not exist",
        expression=(f"{element}.reference",),
    )


# --- conditional interactions -----------------------------------------------------------------


def parse_search_criteria(query: str) -> list[tuple[str, str]]:
    """Search parameters from a conditional URL's query ('identifier=x|1&active=true')."""
    from urllib.parse import parse_qsl

    query = query.split("?", 1)[1] if "?" in query else query
    params = parse_qsl(query, keep_blank_values=True)
    if not params:
        raise FhirError.single(400, "invalid", "a conditional request needs search parameters")
    return params


def lock_criteria(resource_type: str, params: list[tuple[str, str]]) -> None:
    """Serialise conditional writes with the same criteria (two If-None-Exist creates, say).

    PostgreSQL: a transaction-scoped advisory lock on a hash of the criteria. SQLite runs write
    transactions one at a time already.
    """
    lock_all_criteria(resource_type, [params])


def lock_all_criteria(resource_type: str, criteria: list[list[tuple[str, str]]]) -> None:
    """`lock_criteria` for each of `criteria`, in the order given, in one statement (one round
    trip). Callers taking several locks give them in a fixed order (sorted), so two transactions
    never wait for each other's."""
    statement = lock_statement(resource_type, criteria)
    if statement is not None:
        with connection.cursor() as cursor:
            cursor.execute(*statement)


def lock_statement(resource_type: str, criteria: list[list[tuple[str, str]]]) -> tuple[str, list] | None:
    """The SQL statement and parameters that `lock_all_criteria` runs; None when there is nothing
    to lock (no criteria, or not PostgreSQL). For callers that send it with the statement that
    follows in one round trip (`lookup.find_by_identifiers`)."""
    if connection.vendor != "postgresql" or not criteria:
        return None
    lock_ids = [_criteria_lock_id(resource_type, params) for params in criteria]
    # The select list is evaluated left to right: the locks are taken in the order given.
    return f"SELECT {', '.join(['pg_advisory_xact_lock(%s)'] * len(lock_ids))}", lock_ids


def _criteria_lock_id(resource_type: str, params: list[tuple[str, str]]) -> int:
    key = repr((resource_type, sorted(params))).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big", signed=True)


def first_two_matches(resource_type: str, params: list[tuple[str, str]]) -> list[ResourceRecord]:
    """Up to two current resources matching the search: enough to tell "one" from "several"."""
    from integrations.fhir.search import find_matches  # search imports the store's models

    return list(find_matches(resource_type, params)[:2])


def match_conditional(resource_type: str, criteria: str, interaction: str) -> ResourceRecord | None:
    """The one resource matching a conditional interaction's `criteria` (None when none matches).

    Takes the criteria's lock first (`lock_criteria`), so concurrent conditional writes with the
    same criteria queue; several matches raise 412 naming the `interaction`.
    """
    params = parse_search_criteria(criteria)
    lock_criteria(resource_type, params)
    matches = first_two_matches(resource_type, params)
    if len(matches) > 1:
        raise FhirError.single(
            412, "multiple-matches", f"{interaction} '{criteria}' matches more than one {resource_type}"
        )
    return matches[0] if matches else None


# --- the interactions -------------------------------------------------------------------------


def _insert_version(record: ResourceRecord, method: str, text: str, moment: datetime) -> None:
    ResourceVersion.objects.create(
        record=record,
        resource_type=record.resource_type,
        logical_id=record.logical_id,
        version_id=record.version_id,
        last_updated=moment,
        method=method,
        text=text,
    )


def _write_transaction(function):
    """`transaction.atomic` around a write, with a keyword `savepoint` (default True) for callers
    already in a transaction: `savepoint=False` makes no savepoint (two round trips fewer), so a
    failed write spoils the caller's whole transaction; only for callers that then roll it all back
    (the HL7 v2 interface applying a message), never for ones that catch the error and go on."""

    @functools.wraps(function)
    def write(*args, savepoint: bool = True, **kwargs):
        with transaction.atomic(savepoint=savepoint):
            return function(*args, **kwargs)

    return write


@_write_transaction
def create_resource(
    resource: dict,
    *,
    if_none_exist: str | None = None,
    expected_type: str | None = None,
    then: Then | None = None,
    checked: bool = False,
) -> WriteResult:
    """Create `resource` under a new server-assigned id (any id in the body is ignored, per spec).

    `expected_type` is the type named by the URL, which the body must match.
    With `if_none_exist` (the If-None-Exist header's query): no match creates; one match returns
    it untouched (`existing=True`); several matches raise 412.

    `then`, for a caller whose transaction ends with this write (on PostgreSQL, of a type without
    write hooks, which must run inside the transaction): called with the new logical id just
    before the write's statement is sent; the statements it returns (SQL with `%s` placeholders,
    and their parameters; a COMMIT, say) go in the same round trip, after the write's. It is not
    called when that cannot be done; the caller then sends its statements itself.

    `checked`: the caller built `resource` from values it checked (module docstring); it is not
    validated again.
    """
    if not checked:
        validate_resource(resource, expected_type=expected_type)
    resource_type = resource["resourceType"]
    if if_none_exist is not None:
        match = match_conditional(resource_type, if_none_exist, "If-None-Exist")
        if match is not None:
            return WriteResult(StoredResource.of(match), created=False, existing=True)
    check_references([resource])
    return _create(resource, new_logical_id(), then=then)


def _create(resource: dict, logical_id: str, *, then: Then | None = None) -> WriteResult:
    return _write_prepared(prepare_create(resource, logical_id), then=then)


@dataclass
class PreparedCreate:
    """A create whose work without the database is done (`prepare_create`): the record, its
    first version as stored, and on PostgreSQL its index rows' clauses of the write statement."""

    record: ResourceRecord
    stamped: dict
    index_write: tuple[list[str], list] | None


def prepare_create(resource: dict, logical_id: str | None = None) -> PreparedCreate:
    """What creating `resource` (under `logical_id`, default a new one) computes before it writes:
    id and meta, the JSON text, the search index rows. Uses no database connection, so it can run
    while a query of the caller's connection is in flight (`integrations/hl7v2/overlap.py`);
    `create_prepared` writes it."""
    logical_id = logical_id or new_logical_id()
    moment = _now()
    stamped = _stamp(resource, logical_id, 1, moment)
    record = ResourceRecord(
        resource_type=stamped["resourceType"],
        logical_id=logical_id,
        version_id=1,
        last_updated=moment,
        text=_dumps(stamped),
    )
    index_write = (
        indexing.write_clauses(record, stamped, record_id_sql=_NEW_RECORD_ID)
        if connection.vendor == "postgresql"
        else None
    )
    return PreparedCreate(record, stamped, index_write)


@_write_transaction
def create_prepared(prepared_create: PreparedCreate, *, then: Then | None = None) -> WriteResult:
    """Write what `prepare_create` prepared: `create_resource(resource, checked=True, then=then)`
    for a resource the caller built from checked values."""
    check_references([prepared_create.stamped])
    return _write_prepared(prepared_create, then=then)


def _write_prepared(prepared_create: PreparedCreate, *, then: Then | None) -> WriteResult:
    record, stamped = prepared_create.record, prepared_create.stamped
    _save_version(
        record, Method.CREATE, stamped, created=True, then=then, index_write=prepared_create.index_write
    )
    _announce(record, stamped, "")
    return WriteResult(StoredResource.of(record), created=True)


_RECORD_TABLE = ResourceRecord._meta.db_table
# The id of the record a write statement inserts (its `rec` clause), for its index rows.
_NEW_RECORD_ID = "(SELECT id FROM rec)"
_VERSION_TABLE = ResourceVersion._meta.db_table


def _save_version(
    record: ResourceRecord,
    method: str,
    stamped: dict | None,
    *,
    created: bool,
    then: Then | None = None,
    index_write: tuple[list[str], list] | None = None,
) -> None:
    """Write `record` as it now is (inserted when `created`, which sets its pk; else updated), its
    version row and its search index rows (`stamped`: the version as stored; None for a deletion,
    which clears them; `index_write`: their clauses computed already, `prepare_create`).

    PostgreSQL: one statement (data-modifying `WITH` clauses), so a write costs one round trip
    rather than one per table; the effect is the same rows as the ORM path of other databases.
    `then` (see `create_resource`) adds statements to that round trip; the statement's result is
    then not read: a created record's pk stays unset (nothing after the caller's last write needs
    it), and an updated record cannot have vanished (its row is locked).
    """
    if connection.vendor != "postgresql":
        if created:
            record.save(force_insert=True)
        else:
            record.save(update_fields=["version_id", "last_updated", "deleted", "text"])
        _insert_version(record, method, record.text, record.last_updated)
        if stamped is None:
            indexing.clear_index(record)
        else:
            indexing.index_resource(record, stamped)
        return
    # The version row copies the record's columns from `rec`, so the JSON text is sent once.
    returning = "RETURNING id, resource_type, logical_id, version_id, last_updated, text"
    if created:
        clauses = [
            f"rec AS (INSERT INTO {_RECORD_TABLE} (resource_type, logical_id, version_id, last_updated, "
            f"deleted, text) VALUES (%s, %s, %s, %s, %s, %s) {returning})"
        ]
        params: list = [
            record.resource_type,
            record.logical_id,
            record.version_id,
            record.last_updated,
            record.deleted,
            record.text,
        ]
    else:
        clauses = [
            f"rec AS (UPDATE {_RECORD_TABLE} SET version_id = %s, last_updated = %s, deleted = %s, "
            f"text = %s WHERE id = %s {returning})"
        ]
        params = [record.version_id, record.last_updated, record.deleted, record.text, record.pk]
    clauses.append(
        f"ver AS (INSERT INTO {_VERSION_TABLE} (record_id, resource_type, logical_id, version_id, "
        "last_updated, method, text) SELECT id, resource_type, logical_id, version_id, last_updated, "
        "%s::text, text FROM rec)"
    )
    params.append(method)
    index_clauses, index_params = index_write or indexing.write_clauses(
        record, stamped, record_id_sql=_NEW_RECORD_ID if created else None
    )
    params += index_params
    with connection.cursor() as cursor:
        # Prepared: statements of the same shape (the same number of index rows per table) are
        # planned once per connection.
        statement = prepared.statement(
            cursor, f"WITH {', '.join([*clauses, *index_clauses])} SELECT id FROM rec", len(params)
        )
        following = (
            then(record.logical_id)
            if then is not None and not hooks.has_hooks(record.resource_type)
            else None
        )
        if following is not None:
            cursor.execute(f"{statement}; {following[0]}", [*params, *following[1]])
            return  # the round trip's result is the last statement's, not the record's id
        cursor.execute(statement, params)
        row = cursor.fetchone()
    if row is None:
        raise ResourceRecord.DoesNotExist(
            f"{record.resource_type}/{record.logical_id} vanished while written"
        )
    record.pk = row[0]


def read_resource(resource_type: str, logical_id: str) -> StoredResource:
    """The current version; 404 when unknown, 410 when deleted."""
    check_resource_type(resource_type)
    # The hottest path of the server: one indexed lookup in plain SQL, skipping the ORM's query
    # compilation, which costs more than the query itself.
    with connection.cursor() as cursor:
        cursor.execute(_read_statement(cursor), [resource_type, logical_id])
        row = cursor.fetchone()
    if row is None:
        raise not_found(resource_type, logical_id)
    version_id, last_updated, deleted, text = row
    if deleted:
        raise gone(resource_type, logical_id, version_id)
    if connection.vendor == "sqlite":  # raw SQLite cursors give naive datetimes or text
        if isinstance(last_updated, str):
            last_updated = parse_datetime(last_updated)
        if timezone.is_naive(last_updated):
            last_updated = last_updated.replace(tzinfo=UTC)
        last_updated = last_updated.astimezone(UTC)
    return StoredResource(resource_type, logical_id, version_id, last_updated, bool(deleted), text)


_READ_SQL = (
    f"SELECT version_id, last_updated, deleted, text FROM {ResourceRecord._meta.db_table} "
    "WHERE resource_type = %s AND logical_id = %s"
)
# PostgreSQL connections that hold the read as a prepared statement (planned once per connection).
_prepared_connections: weakref.WeakSet = weakref.WeakSet()


def _read_statement(cursor) -> str:
    if connection.vendor != "postgresql":
        return _READ_SQL
    raw = connection.connection
    if raw not in _prepared_connections:
        cursor.execute(
            "PREPARE btt_fhir_read(text, text) AS " + _READ_SQL.replace("%s", "$1", 1).replace("%s", "$2", 1)
        )
        _prepared_connections.add(raw)
    return "EXECUTE btt_fhir_read(%s, %s)"


def vread_resource(resource_type: str, logical_id: str, version_id: str) -> StoredResource:
    """One version; 404 when unknown, 410 when that version is a deletion."""
    check_resource_type(resource_type)
    if not version_id.isdigit():
        raise FhirError.single(400, "value", f"version id {version_id!r} must be a positive integer")
    version = ResourceVersion.objects.filter(
        resource_type=resource_type, logical_id=logical_id, version_id=int(version_id)
    ).first()
    if version is None:
        raise FhirError.single(404, "not-found", f"{resource_type}/{logical_id} has no version {version_id}")
    if version.deleted:
        raise gone(resource_type, logical_id, version.version_id)
    return StoredResource.of(version)


def _check_if_match(record: ResourceRecord, if_match: int | None) -> None:
    if if_match is not None and record.version_id != if_match:
        raise FhirError.single(
            412,
            "conflict",
            f"{record.resource_type}/{record.logical_id} is at version {record.version_id}, "
            f"not {if_match} as If-Match expects",
        )


def _write_new_version(
    record: ResourceRecord, resource: dict, method: str, *, then: Then | None = None
) -> StoredResource:
    moment = _now()
    previous_text = "" if record.deleted else record.text
    record.version_id += 1
    record.last_updated = moment
    record.deleted = False
    stamped = _stamp(resource, record.logical_id, record.version_id, moment)
    record.text = _dumps(stamped)
    _save_version(record, method, stamped, created=False, then=then)
    _announce(record, stamped, previous_text)
    return StoredResource.of(record)


_LOCK_FIELDS = ("id", "resource_type", "logical_id", "version_id", "last_updated", "deleted", "text")
_LOCK_SQL = (
    f"SELECT {', '.join(_LOCK_FIELDS)} FROM {_RECORD_TABLE} "
    "WHERE resource_type = %s AND logical_id = %s FOR UPDATE"
)


def _locked_record(resource_type: str, logical_id: str) -> ResourceRecord | None:
    """The head row of a resource, locked until the transaction ends (None when unknown).

    PostgreSQL: a prepared statement (the ORM's compilation of this query cost more than the query).
    """
    if connection.vendor != "postgresql":
        return (
            ResourceRecord.objects.select_for_update()
            .filter(resource_type=resource_type, logical_id=logical_id)
            .first()
        )
    with connection.cursor() as cursor:
        prepared.execute(cursor, _LOCK_SQL, [resource_type, logical_id])
        row = cursor.fetchone()
    return ResourceRecord.from_db(connection.alias, _LOCK_FIELDS, row) if row is not None else None


def check_update_id(resource_type: str, logical_id: str, body: dict) -> None:
    """The id rules of an update (R4 http.html#update): the body carries the URL's id; else 400."""
    body_id = body.get("id")
    if body_id is None:
        raise FhirError.single(
            400,
            "required",
            "an update must carry the resource id in its body",
            expression=(f"{resource_type}.id",),
        )
    if body_id != logical_id:
        raise FhirError.single(
            400,
            "invalid",
            f"the id in the body ({body_id}) does not match the id in the URL ({logical_id})",
            expression=(f"{resource_type}.id",),
        )


@_write_transaction
def update_resource(
    resource_type: str,
    logical_id: str,
    resource: dict,
    *,
    if_match: int | None = None,
    then: Then | None = None,
    checked: bool = False,
) -> WriteResult:
    """Replace the resource with `resource` as a new version; create it when unknown (201).

    The body's id must equal `logical_id`. `if_match` (the ETag's version) must equal the current
    version or 412 is raised; with `if_match` an unknown resource is 404 rather than created.
    `then`, `checked`: as `create_resource`'s.
    """
    check_resource_type(resource_type)
    if not checked:
        validate_resource(resource, expected_type=resource_type)
    check_update_id(resource_type, logical_id, resource)
    check_references([resource])
    record = _locked_record(resource_type, logical_id)
    if record is None:
        if if_match is not None:
            raise not_found(resource_type, logical_id)
        return _create(resource, logical_id, then=then)
    _check_if_match(record, if_match)
    was_deleted = record.deleted
    stored = _write_new_version(record, resource, Method.UPDATE, then=then)
    return WriteResult(stored, created=was_deleted)


@transaction.atomic
def conditional_update(
    resource_type: str, criteria: str, resource: dict, *, if_match: int | None = None
) -> WriteResult:
    """Update the one resource matching `criteria`; create when none; 412 when several match."""
    check_resource_type(resource_type)
    target = match_conditional(resource_type, criteria, "conditional update")
    if target is None:
        validate_resource(resource, expected_type=resource_type)
        check_references([resource])
        return _create(resource, resource.get("id") or new_logical_id())
    if resource.get("id") not in (None, target.logical_id):
        raise FhirError.single(
            400,
            "invalid",
            f"the id in the body ({resource['id']}) is not the id of the matching resource ({target.logical_id})",
            expression=(f"{resource_type}.id",),
        )
    return update_resource(
        resource_type, target.logical_id, {**resource, "id": target.logical_id}, if_match=if_match
    )


@transaction.atomic
def patch_resource(
    resource_type: str, logical_id: str, patch: object, *, if_match: int | None = None
) -> WriteResult:
    """Apply a JSON Patch (RFC 6902) to the current version and store the result as a new one.

    The patched resource is validated like any update; a patch that changes id or resourceType,
    or whose operations fail (a failed `test`, a missing path), is refused with what went wrong.
    """
    check_resource_type(resource_type)
    if not isinstance(patch, list):
        raise FhirError.single(400, "structure", "a JSON Patch body must be an array of operations")
    record = _locked_record(resource_type, logical_id)
    if record is None:
        raise not_found(resource_type, logical_id)
    if record.deleted:
        raise gone(resource_type, logical_id, record.version_id)
    _check_if_match(record, if_match)
    current = orjson.loads(record.text)
    try:
        patched = jsonpatch.JsonPatch(patch).apply(current)
    except (
        jsonpatch.JsonPatchException,
        jsonpatch.JsonPointerException,
        TypeError,
        KeyError,
        ValueError,
    ) as exc:
        raise FhirError.single(422, "processing", f"the JSON Patch could not be applied: {exc}") from None
    if patched.get("resourceType") != resource_type or patched.get("id") != logical_id:
        raise FhirError.single(422, "processing", "a patch may not change resourceType or id")
    validate_resource(patched, expected_type=resource_type)
    check_references([patched])
    return WriteResult(_write_new_version(record, patched, Method.PATCH), created=False)


@transaction.atomic
def delete_resource(resource_type: str, logical_id: str) -> StoredResource | None:
    """Delete the resource, keeping its history; returns the deletion version.

    Deleting an already deleted resource changes nothing and returns None; an unknown one is 404.
    """
    check_resource_type(resource_type)
    record = _locked_record(resource_type, logical_id)
    if record is None:
        raise not_found(resource_type, logical_id)
    if record.deleted:
        return None
    return _delete(record)


def _delete(record: ResourceRecord) -> StoredResource:
    moment = _now()
    record.version_id += 1
    record.last_updated = moment
    record.deleted = True
    record.text = ""
    _save_version(record, Method.DELETE, None, created=False)
    return StoredResource.of(record)


@transaction.atomic
def conditional_delete(resource_type: str, criteria: str) -> int:
    """Delete the one resource matching `criteria`; returns how many were deleted (0 or 1).

    Several matches raise 412, as the spec allows, rather than deleting more than was meant.
    """
    check_resource_type(resource_type)
    target = match_conditional(resource_type, criteria, "conditional delete")
    if target is None:
        return 0
    record = ResourceRecord.objects.select_for_update().get(pk=target.pk)
    _delete(record)
    return 1


def create_resources_bulk(resources: list[dict]) -> list[StoredResource]:
    """Create many resources at once (transaction Bundles, loaders); must run inside an atomic block.

    Each dict must already carry its final `id` (unique, not yet used) and be validated, with
    references checked by the caller; one INSERT per table for the whole batch.
    """
    moment = _now()
    records = []
    stamped_all = []
    for resource in resources:
        stamped = _stamp(resource, resource["id"], 1, moment)
        stamped_all.append(stamped)
        records.append(
            ResourceRecord(
                resource_type=stamped["resourceType"],
                logical_id=stamped["id"],
                version_id=1,
                last_updated=moment,
                text=_dumps(stamped),
            )
        )
    if connection.vendor == "postgresql":
        _insert_bulk(records, stamped_all, moment)
    else:
        _insert_bulk_orm(records, stamped_all, moment)
    for record, stamped in zip(records, stamped_all, strict=True):
        _announce(record, stamped, "")
    return [StoredResource.of(record) for record in records]


def _insert_bulk(records: list[ResourceRecord], stamped_all: list[dict], moment: datetime) -> None:
    """PostgreSQL: the records, their first versions and their index rows in one statement, with
    one array parameter per column (few statement shapes, prepared once per connection)."""
    clauses = [
        f"rec AS (INSERT INTO {_RECORD_TABLE} (resource_type, logical_id, version_id, last_updated, "
        "deleted, text) SELECT t, i, 1, %s::timestamptz, false, x FROM unnest(%s::text[], %s::text[], "
        "%s::text[]) AS u(t, i, x) RETURNING id, resource_type, logical_id, text)",
        f"ver AS (INSERT INTO {_VERSION_TABLE} (record_id, resource_type, logical_id, version_id, "
        "last_updated, method, text) SELECT id, resource_type, logical_id, 1, %s::timestamptz, %s::text, "
        "text FROM rec)",
    ]
    params: list = [
        moment,
        [r.resource_type for r in records],
        [r.logical_id for r in records],
        [r.text for r in records],
        moment,
        Method.CREATE,
    ]
    index_clauses, index_params = indexing.bulk_insert_clauses(
        list(zip(records, stamped_all, strict=True)), records_sql="rec"
    )
    with connection.cursor() as cursor:
        prepared.execute(
            cursor,
            f"WITH {', '.join([*clauses, *index_clauses])} SELECT resource_type, logical_id, id FROM rec",
            params + index_params,
        )
        ids = {(t, i): pk for t, i, pk in cursor.fetchall()}
    for record in records:
        record.pk = ids[(record.resource_type, record.logical_id)]


def _insert_bulk_orm(records: list[ResourceRecord], stamped_all: list[dict], moment: datetime) -> None:
    """`_insert_bulk` through the ORM (SQLite): one INSERT per table and batch."""
    ResourceRecord.objects.bulk_create(records, batch_size=1000)
    if any(record.pk is None for record in records):
        # SQLite before 3.35 cannot return ids from a bulk insert; fetch them.
        pks = dict(
            ResourceRecord.objects.filter(logical_id__in=[r.logical_id for r in records]).values_list(
                "logical_id", "pk"
            )
        )
        for record in records:
            record.pk = pks[record.logical_id]
    ResourceVersion.objects.bulk_create(
        [
            ResourceVersion(
                record=record,
                resource_type=record.resource_type,
                logical_id=record.logical_id,
                version_id=1,
                last_updated=moment,
                method=Method.CREATE,
                text=record.text,
            )
            for record in records
        ],
        batch_size=1000,
    )
    indexing.index_resources(list(zip(records, stamped_all, strict=True)))


def _announce(record: ResourceRecord, stamped: dict, previous_text: str) -> None:
    """Run the post-write hooks of the record's type (`hooks.py`), in the write's transaction."""
    if hooks.has_hooks(record.resource_type):
        hooks.run_write_hooks(
            hooks.WrittenVersion(
                resource_type=record.resource_type,
                logical_id=record.logical_id,
                version_id=record.version_id,
                last_updated=record.last_updated,
                resource=stamped,
                previous_text=previous_text,
            )
        )


def existing_ids(resource_type: str, logical_ids: Iterable[str]) -> set[str]:
    """The ids among `logical_ids` already used by a resource of that type (deleted ones too)."""
    return set(
        ResourceRecord.objects.filter(
            resource_type=resource_type, logical_id__in=list(logical_ids)
        ).values_list("logical_id", flat=True)
    )
