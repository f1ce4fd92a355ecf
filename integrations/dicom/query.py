"""C-FIND matching and C-MOVE / C-GET selection over the DICOM index (PS3.4 Annex C).

Service functions the Query/Retrieve SCP handlers (`scp_query.py`) call; they know nothing of
associations. `find(identifier, model)` answers a C-FIND identifier with the matching entities'
response identifiers; `instances_to_retrieve(identifier, model)` turns a C-MOVE / C-GET
identifier into the instances to send. `is_permitted(ae_title, operation)` applies the remote-AE
permissions.

Matching (PS3.4 C.2.2.2) follows the rules QIDO-RS uses too, written once in `matching.py`:
single value, universal (zero length, or only `*`), Empty Value Matching (`""`), wildcard (`*`,
`?`), list of values (any may match), range on DA / TM / DT (`A-B`, `-B`, `A-`), sequence
matching (an item of item keys), and, where the requestor negotiated it (C-FIND extended
negotiation), combined date-time matching of Study Date with Study Time. All of it runs in SQL:
on the index columns where an attribute has one, else in the DICOM JSON `tags` of the entity's
level and the levels above. A key of an attribute that cannot be matched (binary VRs) is
returned but not matched.

Hierarchical model: a C-FIND below the top level of its information model must carry the unique
key of every level above (single value, no wildcard); a C-MOVE / C-GET needs the unique key of its
level (upper-level unique keys, when present, must match too).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db.models import Count, F, Q, QuerySet
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from integrations.dicom import matching, services
from integrations.dicom.matching import IMAGE, PATIENT, SERIES, STUDY, MatchError
from integrations.dicom.models import DicomPatient, Instance, RemoteAE, Series, Study
from integrations.dicom.sql import has_wildcard

# --- Information models and levels -------------------------------------------------------------

PATIENT_ROOT = "PATIENT"
STUDY_ROOT = "STUDY"

MODEL_LEVELS: dict[str, tuple[str, ...]] = {
    PATIENT_ROOT: (PATIENT, STUDY, SERIES, IMAGE),
    STUDY_ROOT: (STUDY, SERIES, IMAGE),
}
UNIQUE_KEYS: dict[str, str] = {
    PATIENT: "PatientID",
    STUDY: "StudyInstanceUID",
    SERIES: "SeriesInstanceUID",
    IMAGE: "SOPInstanceUID",
}
LEVEL_MODELS = {PATIENT: DicomPatient, STUDY: Study, SERIES: Series, IMAGE: Instance}
# Query/Retrieve SOP classes this node provides, by information model.
FIND_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.2.1.1": PATIENT_ROOT,  # Patient Root Q/R Information Model - FIND
    "1.2.840.10008.5.1.4.1.2.2.1": STUDY_ROOT,  # Study Root Q/R Information Model - FIND
}
MOVE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.2.1.2": PATIENT_ROOT,  # Patient Root Q/R Information Model - MOVE
    "1.2.840.10008.5.1.4.1.2.2.2": STUDY_ROOT,  # Study Root Q/R Information Model - MOVE
}
GET_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.2.1.3": PATIENT_ROOT,  # Patient Root Q/R Information Model - GET
    "1.2.840.10008.5.1.4.1.2.2.3": STUDY_ROOT,  # Study Root Q/R Information Model - GET
}
MODEL_OF_SOP_CLASS = {**FIND_SOP_CLASSES, **MOVE_SOP_CLASSES, **GET_SOP_CLASSES}

# --- Status codes (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4) -----------------------------------------

STATUS_SUCCESS = 0x0000  # Success
STATUS_PENDING = 0xFF00  # Pending: matches are continuing
STATUS_CANCEL = 0xFE00  # Cancel: matching / sub-operations terminated due to a cancel request
STATUS_OUT_OF_RESOURCES = 0xA700  # Refused: Out of resources
STATUS_OUT_OF_RESOURCES_MATCHES = 0xA701  # Refused: Out of resources - unable to calculate matches
STATUS_MOVE_DESTINATION_UNKNOWN = 0xA801  # Refused: Move destination unknown
STATUS_IDENTIFIER_MISMATCH = 0xA900  # Failed: Identifier does not match SOP Class
STATUS_UNABLE_TO_PROCESS = 0xC000  # Failed: Unable to process
STATUS_NOT_PERMITTED = 0xC001  # Failed: Unable to process - calling AE not permitted (our code)
STATUS_SUBOPS_WARNING = 0xB000  # Warning: sub-operations complete, one or more failures


class QueryError(Exception):
    """A request this node refuses: a DICOM status and the error comment that goes with it."""

    def __init__(self, status: int, comment: str, offending: int | None = None) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment[:64]  # ErrorComment is LO
        self.offending = offending

    def status_dataset(self) -> Dataset:
        """The status as pynetdicom takes it from a handler: Status, ErrorComment, OffendingElement."""
        ds = Dataset()
        ds.Status = self.status
        ds.ErrorComment = self.comment
        if self.offending is not None:
            ds.OffendingElement = [self.offending]
        return ds


# --- Permissions ----------------------------------------------------------------------------------

OPERATIONS = ("store", "find", "move", "get")


def is_permitted(ae_title: str, operation: str) -> bool:
    """May the calling AE `ae_title` do `operation` (store, find, move, get) on this node?

    A configured RemoteAE answers with its `allow_<operation>` flag; an unknown AE is allowed when
    `BTT_DICOM_ALLOW_UNKNOWN_AE` is on (the default) and refused in allow-list mode.
    """
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r}")
    return services.peer_permissions(ae_title).allows(operation)


def require_permission(ae_title: str, operation: str) -> None:
    """Raise a QueryError (0xC001) when `ae_title` may not do `operation`."""
    if not is_permitted(ae_title, operation):
        raise QueryError(
            STATUS_NOT_PERMITTED, f"AE {ae_title.strip()} is not permitted to C-{operation.upper()}"
        )


def move_destination(ae_title: str) -> RemoteAE | None:
    """The configured remote AE a C-MOVE may send to, or None (unknown, or allow_move off)."""
    return RemoteAE.objects.filter(ae_title=ae_title.strip(), allow_move=True).first()


# --- Attributes: computed values ----------------------------------------------------------------

# Computed return keys, by the level they describe (counted per page of results). Those that are
# also index columns (`matching.INDEXED`) can be matched; the others are never matched.
COMPUTED: dict[str, str] = {
    "NumberOfPatientRelatedStudies": PATIENT,
    "NumberOfPatientRelatedSeries": PATIENT,
    "NumberOfPatientRelatedInstances": PATIENT,
    "NumberOfStudyRelatedSeries": STUDY,
    "NumberOfStudyRelatedInstances": STUDY,
    "ModalitiesInStudy": STUDY,
    "SOPClassesInStudy": STUDY,
    "NumberOfSeriesRelatedInstances": SERIES,
}
# Keys that describe the request or the response, never matched.
_CONTROL_KEYWORDS = {
    "QueryRetrieveLevel",
    "SpecificCharacterSet",
    "QueryRetrieveView",
    "TimezoneOffsetFromUTC",
}
_RETRIEVE_AE_TITLE = Tag(0x0008, 0x0054)
_INSTANCE_AVAILABILITY = Tag(0x0008, 0x0056)


def _levels_up_to(model: str, level: str) -> tuple[str, ...]:
    """The levels of `model` from the top down to `level` included."""
    levels = MODEL_LEVELS[model]
    return levels[: levels.index(level) + 1]


def _ancestor(row: Any, row_level: str, target_level: str) -> Any:
    """The `target_level` entity of `row` (through the select_related parents)."""
    obj = row
    for part in filter(None, matching.prefix(row_level, target_level).split("__")):
        obj = getattr(obj, part)
    return obj


def _tags_lookup(row: Any, row_level: str, tag_key: str) -> dict | None:
    """The DICOM JSON element `tag_key` of `row`, from its own level's tags or its parents'."""
    for level in matching.ancestry(row_level):
        entity = _ancestor(row, row_level, level)
        element = (entity.tags or {}).get(tag_key)
        if element is not None:
            return element
    return None


# --- The query plan ---------------------------------------------------------------------------------


@dataclass
class _Plan:
    model: str
    level: str
    condition: Q = field(default_factory=Q)
    # Requested return keys, in identifier order: (tag, keyword, vr).
    return_keys: list[tuple[int, str, str]] = field(default_factory=list)
    computed: set[str] = field(default_factory=set)
    # Sequence keys: tag -> (the requested item key elements, the item match or None).
    sequences: dict[int, tuple[list, matching.ItemMatch | None]] = field(default_factory=dict)


def _tag_key(tag: int) -> str:
    return f"{tag:08X}"


def query_level(identifier: Dataset, model: str) -> str:
    """The identifier's QueryRetrieveLevel, checked against the information model."""
    if "QueryRetrieveLevel" not in identifier:
        raise QueryError(STATUS_IDENTIFIER_MISMATCH, "QueryRetrieveLevel is missing", offending=0x00080052)
    raw = identifier.QueryRetrieveLevel
    level = str(raw[0] if isinstance(raw, MultiValue) else (raw or "")).strip().upper()
    if level not in MODEL_LEVELS[model]:
        root = "Patient Root" if model == PATIENT_ROOT else "Study Root"
        raise QueryError(
            STATUS_IDENTIFIER_MISMATCH,
            f"QueryRetrieveLevel {level or '(empty)'!r} is invalid for {root}",
            offending=0x00080052,
        )
    return level


def _unique_key_values(identifier: Dataset, keyword: str) -> list[str] | None:
    """The values of a unique key, or None when the key is absent."""
    if keyword not in identifier:
        return None
    return matching.element_values(identifier[keyword])


def _check_upper_unique_keys(identifier: Dataset, model: str, level: str, required: bool) -> None:
    for upper in _levels_up_to(model, level)[:-1]:
        keyword = UNIQUE_KEYS[upper]
        values = _unique_key_values(identifier, keyword)
        tag = int(Tag(keyword))
        if values is None or not values:
            if required:
                raise QueryError(
                    STATUS_IDENTIFIER_MISMATCH,
                    f"{level} level query needs a single {keyword}",
                    offending=tag,
                )
            continue
        if any(has_wildcard(v) for v in values):
            raise QueryError(
                STATUS_IDENTIFIER_MISMATCH, f"{keyword}: no wildcards in unique keys", offending=tag
            )


def _plan(identifier: Dataset, model: str, level: str, combined_datetime: bool) -> _Plan:
    plan = _Plan(model=model, level=level)
    visible = set(_levels_up_to(model, level)) | ({PATIENT} if model == STUDY_ROOT else set())
    json_levels = matching.ancestry(level)
    date_time: dict[str, tuple[matching.KeyMatch, list[str]]] = {}
    for elem in identifier:
        tag = int(elem.tag)
        if elem.tag.group in (0x0000, 0x0002) or elem.keyword in _CONTROL_KEYWORDS:
            continue
        if tag == _RETRIEVE_AE_TITLE:
            continue  # always returned
        keyword = elem.keyword
        vr = str(elem.VR).split(" or ")[0]
        plan.return_keys.append((tag, keyword, vr))
        try:
            if vr == "SQ":
                item_keys = [e for e in (elem.value[0] if elem.value else []) if e.tag.element != 0]
                item_match = matching.parse_sequence(elem.value or [])
                plan.sequences[tag] = (item_keys, item_match)
                if item_match is not None:
                    plan.condition &= matching.json_condition(level, json_levels, tag, item_match)
                continue
            if keyword in COMPUTED and COMPUTED[keyword] in visible:
                plan.computed.add(keyword)
            attribute = matching.INDEXED.get(keyword)
            if attribute is not None:
                if attribute.level not in visible:
                    continue  # a key of a lower level: not matched, returned empty
                values = matching.element_values(elem)
                match = matching.parse(values, attribute.kind)
                if match is None:
                    continue
                if keyword in ("StudyDate", "StudyTime"):
                    date_time[keyword] = (match, values)
                    continue
                plan.condition &= matching.attribute_condition(level, attribute, match)
                continue
            if keyword in COMPUTED or tag == _INSTANCE_AVAILABILITY:
                continue  # returned, never matched
            kind = matching.kind_of_vr(vr)
            if kind == matching.UNMATCHABLE:
                continue  # returned, not matched
            match = matching.parse(matching.element_values(elem), kind)
            if match is not None:
                plan.condition &= matching.json_condition(level, json_levels, tag, match)
        except MatchError as exc:
            raise QueryError(
                STATUS_IDENTIFIER_MISMATCH, f"{keyword or elem.tag}: {exc}", offending=tag
            ) from None
    plan.condition &= _date_time_condition(level, date_time, combined_datetime)
    return plan


def _date_time_condition(
    level: str, keys: dict[str, tuple[matching.KeyMatch, list[str]]], combined_datetime: bool
) -> Q:
    """Study Date and Study Time: each on its own, or as one date-time range when the requestor
    negotiated combined date-time matching and both keys are ranges."""
    date, time = keys.get("StudyDate"), keys.get("StudyTime")
    if combined_datetime and date is not None and time is not None:
        # A single time value is read as the period it names (a range too, once parsed): only
        # a key written as a range takes part.
        is_range = all(len(values) == 1 and "-" in values[0] for _, values in (date, time))
        combined = matching.combine_date_time(date[0], time[0]) if is_range else None
        if combined is not None:
            study = matching.prefix(level, STUDY)
            moment = matching.Joined(F(f"{study}study_date"), F(f"{study}study_time"))
            return Q(matching.ColumnMatch(moment, combined)) & ~Q(**{f"{study}study_date": ""})
    condition = Q()
    for keyword, (match, _) in keys.items():
        condition &= matching.attribute_condition(level, matching.INDEXED[keyword], match)
    return condition


def _base_queryset(level: str) -> QuerySet:
    if level == PATIENT:
        return DicomPatient.objects.all()
    if level == STUDY:
        return Study.objects.select_related("patient")
    if level == SERIES:
        return Series.objects.select_related("study__patient")
    return Instance.objects.select_related("series__study__patient")


# --- C-FIND ---------------------------------------------------------------------------------------


def find(
    identifier: Dataset,
    model: str,
    *,
    retrieve_aet: str | None = None,
    chunk_size: int = 500,
    combined_datetime: bool = False,
) -> Iterator[Dataset]:
    """The response identifiers of the entities matching a C-FIND `identifier`.

    `model` is PATIENT_ROOT or STUDY_ROOT. The identifier is checked here (QueryError on a bad
    level, missing unique keys or a malformed value) before the iterator is returned; rows are
    read in keyset-paged chunks, so the iterator holds no database cursor between results. Each
    response holds the requested keys (zero length where the entity has no value; a sequence key
    with item keys: the matching items with the requested item attributes), QueryRetrieveLevel,
    SpecificCharacterSet and RetrieveAETitle (`retrieve_aet`, default BTT_DICOM_AET).
    `combined_datetime`: the requestor negotiated combined date-time range matching.
    """
    level = query_level(identifier, model)
    _check_upper_unique_keys(identifier, model, level, required=True)
    plan = _plan(identifier, model, level, combined_datetime)
    aet = retrieve_aet or settings.BTT_DICOM_AET
    queryset = _base_queryset(level).filter(plan.condition)
    return _iterate(plan, queryset, aet, chunk_size)


def _iterate(plan: _Plan, queryset: QuerySet, aet: str, chunk_size: int) -> Iterator[Dataset]:
    last_pk = None
    while True:
        page = queryset.order_by("pk")
        if last_pk is not None:
            page = page.filter(pk__gt=last_pk)
        rows = list(page[:chunk_size])
        if not rows:
            return
        last_pk = rows[-1].pk
        computed = _computed_values(rows, plan)
        for row in rows:
            yield _response(row, plan, computed, aet)
        if len(rows) < chunk_size:
            return


def _computed_values(rows: list[Any], plan: _Plan) -> dict[tuple[str, int], str]:
    """Values of the computed keys for a chunk of rows, keyed by (keyword, entity pk)."""
    values: dict[tuple[str, int], str] = {}
    if not rows or not plan.computed:
        return values

    def ids(level: str) -> set[int]:
        return {_ancestor(row, plan.level, level).pk for row in rows}

    def counts(keyword: str, queryset: QuerySet, group: str, entity_ids: set[int]) -> None:
        found = dict(queryset.values_list(group).annotate(n=Count("pk")).values_list(group, "n"))
        for pk in entity_ids:
            values[(keyword, pk)] = str(found.get(pk, 0))

    for keyword in plan.computed:
        if keyword == "NumberOfPatientRelatedStudies":
            pks = ids(PATIENT)
            counts(keyword, Study.objects.filter(patient_id__in=pks).order_by(), "patient_id", pks)
        elif keyword == "NumberOfPatientRelatedSeries":
            pks = ids(PATIENT)
            counts(
                keyword, Series.objects.filter(study__patient_id__in=pks).order_by(), "study__patient_id", pks
            )
        elif keyword == "NumberOfPatientRelatedInstances":
            pks = ids(PATIENT)
            counts(
                keyword,
                Instance.objects.filter(series__study__patient_id__in=pks).order_by(),
                "series__study__patient_id",
                pks,
            )
        elif keyword == "NumberOfStudyRelatedSeries":
            pks = ids(STUDY)
            counts(keyword, Series.objects.filter(study_id__in=pks).order_by(), "study_id", pks)
        elif keyword == "NumberOfStudyRelatedInstances":
            pks = ids(STUDY)
            counts(
                keyword, Instance.objects.filter(series__study_id__in=pks).order_by(), "series__study_id", pks
            )
        elif keyword == "NumberOfSeriesRelatedInstances":
            pks = ids(SERIES)
            counts(keyword, Instance.objects.filter(series_id__in=pks).order_by(), "series_id", pks)
        elif keyword in {"ModalitiesInStudy", "SOPClassesInStudy"}:
            pks = ids(STUDY)
            if keyword == "ModalitiesInStudy":
                pairs = Series.objects.filter(study_id__in=pks).values_list("study_id", "modality")
            else:
                pairs = Instance.objects.filter(series__study_id__in=pks).values_list(
                    "series__study_id", "sop_class_uid"
                )
            grouped: dict[int, list[str]] = {pk: [] for pk in pks}
            for pk, value in pairs.order_by().distinct():
                if value and value not in grouped[pk]:
                    grouped[pk].append(value)
            for pk, items in grouped.items():
                values[(keyword, pk)] = "\\".join(sorted(items))
    return values


def _response(row: Any, plan: _Plan, computed: dict[tuple[str, int], str], aet: str) -> Dataset:
    ds = Dataset()
    non_ascii = False
    ancestry = matching.ancestry(plan.level)
    for tag, keyword, vr in plan.return_keys:
        value: Any = None
        attribute = matching.INDEXED.get(keyword)
        if keyword in COMPUTED and COMPUTED[keyword] in ancestry:
            entity = _ancestor(row, plan.level, COMPUTED[keyword])
            value = computed.get((keyword, entity.pk))
        elif attribute is not None and attribute.level in ancestry:
            raw = getattr(_ancestor(row, plan.level, attribute.level), attribute.field)
            value = None if raw in (None, "") else str(raw)
        elif tag == _INSTANCE_AVAILABILITY:
            value = "ONLINE"
        elif tag in plan.sequences:
            requested, item_match = plan.sequences[tag]
            items = matching.shape_sequence(
                _tags_lookup(row, plan.level, _tag_key(tag)), requested, item_match
            )
            if _copy_json_element(ds, tag, {"vr": "SQ", "Value": items}):
                non_ascii = non_ascii or not _is_ascii(ds[tag].value)
                continue
        else:
            element = _tags_lookup(row, plan.level, _tag_key(tag))
            if element is not None and _copy_json_element(ds, tag, element):
                non_ascii = non_ascii or not _is_ascii(ds[tag].value)
                continue
        if value is None:
            ds.add_new(tag, vr, [] if vr == "SQ" else None)
            continue
        if isinstance(value, str) and not value.isascii():
            non_ascii = True
        ds.add_new(tag, vr, value)
    ds.QueryRetrieveLevel = plan.level
    ds.RetrieveAETitle = aet
    ds.SpecificCharacterSet = "ISO_IR 192" if non_ascii else "ISO_IR 100"
    return ds


def _copy_json_element(ds: Dataset, tag: int, element: dict) -> bool:
    """Set `tag` in `ds` from its DICOM JSON; False when it cannot be (bulk data by reference)."""
    if "BulkDataURI" in element:
        return False
    try:
        parsed = Dataset.from_json({_tag_key(tag): element})
    except Exception:
        return False
    ds[tag] = parsed[tag]
    return True


def _is_ascii(value: Any) -> bool:
    if isinstance(value, str):
        return value.isascii()
    if isinstance(value, Iterable) and not isinstance(value, bytes | Dataset):
        return all(_is_ascii(v) for v in value)
    return str(value).isascii()


# --- C-MOVE / C-GET ------------------------------------------------------------------------------


def instances_to_retrieve(identifier: Dataset, model: str) -> QuerySet:
    """The Instance rows a C-MOVE / C-GET `identifier` asks for, in series / instance order.

    The unique key of the retrieve level must be present (a single value or a list of UIDs); the
    unique keys of levels above are optional but, when present, must match. Other keys are ignored.
    Raises QueryError (0xA900) otherwise.
    """
    level = query_level(identifier, model)
    _check_upper_unique_keys(identifier, model, level, required=False)
    own_key = UNIQUE_KEYS[level]
    values = _unique_key_values(identifier, own_key)
    if not values:
        raise QueryError(
            STATUS_IDENTIFIER_MISMATCH,
            f"{level} level retrieve needs {own_key}",
            offending=int(Tag(own_key)),
        )
    if any(has_wildcard(v) for v in values):
        raise QueryError(
            STATUS_IDENTIFIER_MISMATCH,
            f"{own_key}: no wildcards in unique keys",
            offending=int(Tag(own_key)),
        )
    condition = Q()
    for upper in _levels_up_to(model, level):
        keyword = UNIQUE_KEYS[upper]
        key_values = _unique_key_values(identifier, keyword)
        if not key_values:
            continue
        attribute = matching.INDEXED[keyword]
        path = matching.prefix(IMAGE, attribute.level) + attribute.field
        condition &= Q(**{path: key_values[0]}) if len(key_values) == 1 else Q(**{f"{path}__in": key_values})
    return (
        Instance.objects.filter(condition)
        .select_related("series")
        .order_by("series__series_number", "series_id", "instance_number", "pk")
    )
