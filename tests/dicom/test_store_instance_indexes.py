"""The instance table's indexes are the ones its queries use, so that storing an instance writes
no index entry for nothing: no LIKE-pattern copy of the SOP Instance UID (UIDs match whole or
from a list, never by pattern) and no index of `series_id` alone (the series' ordered index
starts with it). The SOP Instance UID stays unique in the database."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, connection, transaction

from integrations.dicom.models import Instance
from tests.dicom.test_study_complete_support import SeriesSpec, new_uid, store_instances

pytestmark = pytest.mark.django_db


def _index_definitions() -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index "
            "WHERE indrelid = %s::regclass",
            [Instance._meta.db_table],
        )
        return dict(cursor.fetchall())


def test_the_instance_table_has_only_the_indexes_its_queries_use() -> None:
    if connection.vendor != "postgresql":
        pytest.fail("this test reads PostgreSQL's catalogue: run it with DATABASE_URL on PostgreSQL")
    columns = sorted(definition.split("USING btree ")[1] for definition in _index_definitions().values())
    assert columns == ["(id)", "(series_id, instance_number)", "(sop_instance_uid)", "(storage_key)"]


def test_a_sop_instance_uid_is_indexed_once() -> None:
    uid = new_uid()
    store_instances(uid, [SeriesSpec(count=1)])
    stored = Instance.objects.get(series__study__study_instance_uid=uid)
    copy = Instance.objects.get(pk=stored.pk)
    copy.pk = None
    copy.storage_key = "elsewhere.dcm"
    with pytest.raises(IntegrityError), transaction.atomic():
        copy.save(force_insert=True)
    assert Instance.objects.filter(sop_instance_uid=stored.sop_instance_uid).count() == 1
