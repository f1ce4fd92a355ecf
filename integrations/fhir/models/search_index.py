"""Search index tables, written by `integrations.fhir.indexing` and queried by `integrations.fhir.search`.

One table per search value type. Every row belongs to one `ResourceRecord` (deleted with it) and
repeats the record's `resource_type` and the search parameter `param` code, so a search on one
parameter of one type reads one contiguous range of a composite B-tree index without touching
the records table until the (small) set of matching record ids is known.

Composite parameters (`code-value-quantity`) are stored as their components: the values of
component `i` go into that component's own type table under the parameter code `"<code>$<i>"`,
and `group_no` numbers the element they came from (1, 2, ... per record and parameter; 0 for
plain rows). A composite search joins the component rows on (record, group_no), so
`code-value-quantity=http://loinc.org|8480-6$gt100` only matches when the code and the value
belong to the same Observation or the same Observation.component.

Strings that can be long are clipped to their column's length (`clip`), both when written and
when searched, so an index row never exceeds PostgreSQL's B-tree limit; two values differing only
after the clip would match each other, which no real code, system or URL comes near.

Missing values write no row; `:missing` is answered with NOT EXISTS on (record, param).
"""

from __future__ import annotations

from django.db import models

from integrations.fhir.models.resources import ResourceRecord

__all__ = [
    "DateIndex",
    "NumberIndex",
    "QuantityIndex",
    "ReferenceIndex",
    "SearchSnapshot",
    "StringIndex",
    "TokenIndex",
    "UriIndex",
]

# Column lengths; values are clipped to these (see `clip`).
TYPE_LEN = 64
PARAM_LEN = 100
TOKEN_LEN = 255
STRING_LEN = 255
URL_LEN = 512
UNIT_LEN = 128


def clip(value: str | None, length: int) -> str:
    """`value` cut to `length` characters ('' for None), as stored in and searched on a column."""
    if not value:
        return ""
    return value if len(value) <= length else value[:length]


class _IndexRow(models.Model):
    # No single-column FK index: the (record, param) index below serves the cascade delete, the
    # re-index delete and the per-record lookups of :missing, _sort and _include.
    # No foreign key constraint in the database either: index rows are derived data that only
    # `indexing` writes, in the statement or transaction that writes their record, and records
    # are deleted through the ORM, which deletes their index rows (CASCADE). The constraint's
    # check of every row cost a Patient write (~30 rows) about a quarter of its database time.
    record = models.ForeignKey(
        ResourceRecord, on_delete=models.CASCADE, db_index=False, db_constraint=False, related_name="+"
    )
    resource_type = models.CharField(max_length=TYPE_LEN)
    param = models.CharField(max_length=PARAM_LEN)
    # Composite element number for component rows ("<code>$<i>"), 0 for plain rows.
    group_no = models.PositiveIntegerField(default=0)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.resource_type}.{self.param} of record {self.record_id}"


class TokenIndex(_IndexRow):
    """code / Coding / CodeableConcept / Identifier / ContactPoint / boolean values."""

    system = models.CharField(max_length=TOKEN_LEN, default="")  # '' when the value has no system
    code = models.CharField(max_length=TOKEN_LEN, default="")
    # Normalised (casefolded, accent-free) display text, for :text.
    text = models.CharField(max_length=STRING_LEN, default="")

    class Meta:
        db_table = "fhir_idx_token"
        indexes = [
            # record last: the matches of one code come out in record order from the index alone,
            # so a page of the default (record-id) order stops after `_count` rows.
            models.Index(
                fields=["resource_type", "param", "code", "system", "record"], name="fhir_tok_code_rec"
            ),
            models.Index(fields=["record", "param"], name="fhir_tok_rec"),
        ]


class StringIndex(_IndexRow):
    # Normalised (casefolded, accent-free), clipped: the default and :contains searches use it.
    value = models.CharField(max_length=STRING_LEN)
    # The value as written in the resource, for :exact.
    exact = models.TextField()

    class Meta:
        db_table = "fhir_idx_string"
        indexes = [
            # varchar_pattern_ops lets PostgreSQL answer LIKE 'abc%' from the index whatever the
            # database collation; SQLite ignores opclasses.
            models.Index(
                fields=["resource_type", "param", "value"],
                name="fhir_str_value",
                opclasses=["varchar_pattern_ops"] * 3,
            ),
            models.Index(fields=["record", "param"], name="fhir_str_rec"),
        ]


class ReferenceIndex(_IndexRow):
    target_type = models.CharField(max_length=TYPE_LEN, default="")
    target_id = models.CharField(max_length=TYPE_LEN, default="")
    # The literal reference or canonical URL (without |version).
    url = models.CharField(max_length=URL_LEN, default="")
    identifier_system = models.CharField(max_length=TOKEN_LEN, default="")
    identifier_value = models.CharField(max_length=TOKEN_LEN, default="")

    class Meta:
        db_table = "fhir_idx_reference"
        indexes = [
            models.Index(
                fields=["resource_type", "param", "target_id", "target_type"], name="fhir_ref_search"
            ),
            # Reverse direction: _revinclude, _has, chains, Patient/$everything.
            models.Index(
                fields=["target_type", "target_id", "resource_type", "param"], name="fhir_ref_target"
            ),
            models.Index(fields=["resource_type", "param", "url"], name="fhir_ref_url"),
            models.Index(fields=["record", "param"], name="fhir_ref_rec"),
        ]


class DateIndex(_IndexRow):
    # The period the value covers; open ends are stored as DATE_MIN / DATE_MAX (see indexing).
    low = models.DateTimeField()
    high = models.DateTimeField()

    class Meta:
        db_table = "fhir_idx_date"
        indexes = [
            # record last so range scans answer from the index alone, without visiting the table.
            models.Index(
                fields=["resource_type", "param", "low", "high", "record"], name="fhir_date_low_rec"
            ),
            models.Index(fields=["resource_type", "param", "high", "record"], name="fhir_date_high_rec"),
            # Matches in record order answered from the index alone (the default search order).
            models.Index(
                fields=["resource_type", "param", "record", "low", "high"], name="fhir_date_rec_range"
            ),
            models.Index(fields=["record", "param"], name="fhir_date_rec"),
        ]


class NumberIndex(_IndexRow):
    # Doubles rather than fixed-scale decimals: any magnitude fits, and the search side converts
    # its bounds the same way, so equal decimals compare equal.
    value = models.FloatField()
    low = models.FloatField()
    high = models.FloatField()

    class Meta:
        db_table = "fhir_idx_number"
        indexes = [
            models.Index(fields=["resource_type", "param", "value"], name="fhir_num_value"),
            models.Index(fields=["record", "param"], name="fhir_num_rec"),
        ]


class QuantityIndex(_IndexRow):
    value = models.FloatField()
    low = models.FloatField()
    high = models.FloatField()
    system = models.CharField(max_length=TOKEN_LEN, default="")
    code = models.CharField(max_length=UNIT_LEN, default="")
    unit = models.CharField(max_length=UNIT_LEN, default="")

    class Meta:
        db_table = "fhir_idx_quantity"
        indexes = [
            models.Index(fields=["resource_type", "param", "code", "value"], name="fhir_qty_code"),
            models.Index(fields=["resource_type", "param", "value"], name="fhir_qty_value"),
            models.Index(fields=["record", "param"], name="fhir_qty_rec"),
        ]


class UriIndex(_IndexRow):
    uri = models.CharField(max_length=URL_LEN)

    class Meta:
        db_table = "fhir_idx_uri"
        indexes = [
            models.Index(
                fields=["resource_type", "param", "uri"],
                name="fhir_uri_value",
                opclasses=["varchar_pattern_ops"] * 3,
            ),
            models.Index(fields=["record", "param"], name="fhir_uri_rec"),
        ]


class SearchSnapshot(models.Model):
    """What the paging links of a search name: its parameters and the state its pages come from.

    Searches in the default order (record id) page with a cursor below `watermark`, the highest
    record id when page 1 was served: resources created later never show up, and none is repeated
    or skipped. Sorted searches keep the ordered ids of their matches in `ids` instead (taken
    with page 1: the sort has to see every match anyway), so every page is cut from the same list.
    """

    id = models.CharField(max_length=36, primary_key=True)
    created = models.DateTimeField()
    expires = models.DateTimeField(db_index=True)
    # The search's resource type ('' for a system-level search or $everything) and its
    # parameters (JSON), re-applied to each page for _include, _summary, ...
    resource_type = models.CharField(max_length=TYPE_LEN, blank=True, default="")
    kind = models.CharField(max_length=16, default="search")
    params = models.TextField()
    # Default order: the highest ResourceRecord id when page 1 was served.
    watermark = models.BigIntegerField(null=True)
    # Sorted searches: comma-separated ResourceRecord ids in result order.
    ids = models.TextField(blank=True, default="")
    # The number of matches, when it was counted.
    total = models.PositiveIntegerField(null=True)
    # Whether `ids` holds every match (False when a sorted search exceeded the snapshot limit).
    complete = models.BooleanField(default=True)

    class Meta:
        db_table = "fhir_search_snapshot"

    def __str__(self) -> str:
        return f"search snapshot {self.id}"
