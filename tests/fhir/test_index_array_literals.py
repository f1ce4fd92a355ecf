"""Index columns travel to PostgreSQL as array literals (`indexing._array_literal`): every string
comes back as it went, quotes and backslashes included, and plain strings are sent unescaped."""

from __future__ import annotations

import pytest
from django.db import connection

from integrations.fhir.indexing import _array_literal

pytestmark = pytest.mark.django_db

CASES = [
    ("plain", "two words", "Ünïcödé"),
    ('say "hi"', "back\\slash", '\\"both\\"', "{braces}", "comma,inside", ""),
    ("NULL",),
]


@pytest.mark.parametrize("values", CASES)
def test_strings_come_back_as_sent(values):
    if connection.vendor != "postgresql":
        pytest.fail("array literals are PostgreSQL's: run these tests on PostgreSQL")
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::text[]", [_array_literal(values)])
        assert tuple(cursor.fetchone()[0]) == values


def test_plain_strings_are_quoted_only():
    assert _array_literal(("a b", "c")) == '{"a b","c"}'
