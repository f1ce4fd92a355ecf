"""Paging: _count, links, totals, and stable pages while other clients write (snapshots)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.core import signing
from django.utils import timezone

from integrations.fhir import store
from integrations.fhir.models.search_index import SearchSnapshot
from integrations.fhir.outcomes import FhirError
from integrations.fhir.search import engine
from tests.fhir.test_search_support import (
    BASE,
    create,
    follow,
    link,
    match_ids,
    observation,
    outcome_issues,
    run,
)

pytestmark = pytest.mark.django_db


def make(n: int, prefix: str = "o", start: int = 0) -> list[str]:
    return [create(observation(f"{prefix}{i:03d}")) for i in range(start, start + n)]


def test_pages_and_links():
    made = make(45)
    page1 = run("Observation", "code=8867-4&_count=20&_total=accurate")
    assert page1["total"] == 45
    assert match_ids(page1) == made[:20]
    assert link(page1, "self") == f"{BASE}/Observation?code=8867-4&_count=20&_total=accurate"
    assert link(page1, "previous") is None
    page2 = follow(link(page1, "next"))
    assert match_ids(page2) == made[20:40]
    assert page2["total"] == 45
    page3 = follow(link(page2, "next"))
    assert match_ids(page3) == made[40:]
    assert link(page3, "next") is None
    assert match_ids(follow(link(page3, "previous"))) == made[20:40]
    assert match_ids(follow(link(page2, "previous"))) == made[:20]
    assert match_ids(follow(link(page3, "first"))) == made[:20]
    assert match_ids(follow(link(page1, "last"))) == made[40:]
    for url in (link(page1, "next"), link(page2, "self"), link(page3, "first")):
        assert url.startswith(f"{BASE}?_getpages=")


def test_total_is_left_out_of_large_unsorted_searches_unless_asked():
    make(5)
    page1 = run("Observation", "_count=2")
    assert "total" not in page1
    assert link(page1, "last") is None
    assert match_ids(follow(link(page1, "next")))


def test_pages_by_offset_for_clients_that_build_their_own_links():
    made = make(9)
    page1 = run("Observation", "_count=3")
    url = link(page1, "next")
    sid = url.split("_getpages=")[1].split("&")[0]
    page = follow(f"{BASE}?_getpages={sid}&_getpagesoffset=6&_count=3")
    assert match_ids(page) == made[6:]
    assert link(page, "next") is None


def test_sorted_search_pages_come_from_the_list_taken_with_page_1():
    made = make(7)
    page1 = run("Observation", "_sort=-_id&_count=3")
    assert page1["total"] == 7  # known from the list at no cost
    expected = sorted(made, reverse=True)
    assert match_ids(page1) == expected[:3]
    page2 = follow(link(page1, "next"))
    assert match_ids(page2) == expected[3:6]
    assert match_ids(follow(link(page1, "last"))) == expected[6:]
    assert match_ids(follow(link(page2, "previous"))) == expected[:3]


def test_single_page_has_only_self_and_exact_total():
    make(3)
    bundle = run("Observation", "_count=3")
    assert [item["relation"] for item in bundle["link"]] == ["self"]
    assert bundle["total"] == 3
    assert not SearchSnapshot.objects.exists()


def test_unsorted_pages_do_not_change_when_others_write_meanwhile():
    made = make(30)
    page1 = run("Observation", "_count=10")
    assert match_ids(page1) == made[:10]
    make(15, prefix="new")  # would otherwise show up on the last page
    store.update_resource("Observation", made[15], observation(made[15], status="amended"))
    store.delete_resource("Observation", made[25])
    page2 = follow(link(page1, "next"))
    assert match_ids(page2) == made[10:20]
    assert (
        next(e for e in page2["entry"] if e["resource"]["id"] == made[15])["resource"]["status"] == "amended"
    )
    page3 = follow(link(page2, "next"))
    assert match_ids(page3) == made[20:25] + made[26:30]
    assert link(page3, "next") is None
    # Going back gives the same pages again.
    assert match_ids(follow(link(page3, "previous"))) == made[10:20]


def test_sorted_pages_do_not_change_when_others_write_meanwhile():
    make(30)
    # Newest first: without a snapshot, resources created now would push page 1's items to page 2.
    page1 = run("Observation", "_sort=-_lastUpdated,-_id&_count=10")
    snapshot = SearchSnapshot.objects.get()
    expected = [int(pk) for pk in snapshot.ids.split(",")]
    from integrations.fhir.models import ResourceRecord

    logical = dict(ResourceRecord.objects.values_list("pk", "logical_id"))
    assert match_ids(page1) == [logical[pk] for pk in expected[:10]]

    make(15, prefix="new")  # would all sort before page 1's items
    moved = logical[expected[12]]
    store.update_resource("Observation", moved, observation(moved, status="amended"))  # now newest

    page2 = follow(link(page1, "next"))
    assert match_ids(page2) == [logical[pk] for pk in expected[10:20]]
    page3 = follow(link(page2, "next"))
    assert match_ids(page3) == [logical[pk] for pk in expected[20:30]]
    assert link(page3, "next") is None
    seen = match_ids(page1) + match_ids(page2) + match_ids(page3)
    assert len(seen) == len(set(seen)) == 30
    assert not any(i.startswith("new") for i in seen)
    # The moved resource is shown as it is now.
    entry = next(e for e in page2["entry"] if e["resource"]["id"] == moved)
    assert entry["resource"]["status"] == "amended"


def test_sorted_by_string_with_inserts_in_the_middle():
    for family in ("B", "D", "F", "H"):
        create({"resourceType": "Patient", "id": f"p-{family}", "name": [{"family": family}]})
    page1 = run("Patient", "_sort=family&_count=2")
    assert match_ids(page1) == ["p-B", "p-D"]
    create({"resourceType": "Patient", "id": "p-A", "name": [{"family": "A"}]})
    create({"resourceType": "Patient", "id": "p-C", "name": [{"family": "C"}]})
    assert match_ids(follow(link(page1, "next"))) == ["p-F", "p-H"]
    assert match_ids(run("Patient", "_sort=family&_count=2")) == ["p-A", "p-B"]


def test_deleted_resources_are_left_out_of_later_pages():
    made = make(6)
    page1 = run("Observation", "_count=3")
    store.delete_resource("Observation", made[4])
    assert match_ids(follow(link(page1, "next"))) == [made[3], made[5]]


def test_count_zero_gives_the_total_only():
    make(7)
    bundle = run("Observation", "_count=0")
    assert bundle["total"] == 7
    assert "entry" not in bundle
    bundle = run("Observation", "_summary=count")
    assert bundle["total"] == 7
    assert "entry" not in bundle


def test_count_is_capped_and_defaults(settings):
    settings.BTT_FHIR_MAX_COUNT = 4
    settings.BTT_FHIR_DEFAULT_COUNT = 2
    make(6)
    assert len(match_ids(run("Observation", "_count=100"))) == 4
    assert len(match_ids(run("Observation", ""))) == 2


def test_total_modes():
    make(5)
    assert "total" not in run("Observation", "_count=2&_total=none")
    assert run("Observation", "_count=2&_total=accurate")["total"] == 5
    assert run("Observation", "_count=2&_total=estimate")["total"] == 5
    with pytest.raises(FhirError):
        run("Observation", "_total=maybe")


def test_bad_count_is_400():
    with pytest.raises(FhirError) as error:
        run("Observation", "_count=-1")
    assert error.value.status == 400
    assert "_count" in str(error.value)


def test_expired_or_unknown_page_is_410(monkeypatch):
    """Default-order paging state lives in the signed link: an hour later (the clock that checks
    the signature's age is moved forward) the link answers 410, as a stored snapshot does."""
    make(3)
    page1 = run("Observation", "_count=1")
    later = time.time() + engine.SNAPSHOT_TTL.total_seconds() + 1
    monkeypatch.setattr(signing.time, "time", lambda: later)
    with pytest.raises(FhirError) as error:
        follow(link(page1, "next"))
    assert error.value.status == 410
    monkeypatch.undo()
    with pytest.raises(FhirError) as error:
        follow(f"{BASE}?_getpages=nope&_getpagesoffset=1&_count=1")
    assert error.value.status == 410


def test_expired_sorted_snapshot_is_410():
    make(3)
    page1 = run("Observation", "_count=1&_sort=_id")
    SearchSnapshot.objects.update(expires=timezone.now() - timedelta(seconds=1))
    with pytest.raises(FhirError) as error:
        follow(link(page1, "next"))
    assert error.value.status == 410


def test_forged_cursor_is_410():
    make(3)
    page1 = run("Observation", "_count=1")
    forged = link(page1, "next").replace("_getpages=c.", "_getpages=c.x")
    with pytest.raises(FhirError) as error:
        follow(forged)
    assert error.value.status == 410


def test_bad_offset_is_400():
    make(3)
    page1 = run("Observation", "_count=1")
    with pytest.raises(FhirError) as error:
        follow(link(page1, "next").replace("_getpagesoffset=1", "_getpagesoffset=x"))
    assert error.value.status == 400


def test_sorted_results_beyond_the_snapshot_limit(monkeypatch):
    monkeypatch.setattr(engine, "SNAPSHOT_LIMIT", 10)
    made = make(25)
    page = run("Observation", "_count=5&_sort=-_id")
    assert "total" not in page
    assert "first 10" in outcome_issues(page)[0]["diagnostics"]
    assert run("Observation", "_count=5&_sort=-_id&_total=accurate")["total"] == 25
    seen = match_ids(page)
    while link(page, "next"):
        page = follow(link(page, "next"))
        seen += match_ids(page)
    assert seen == sorted(made, reverse=True)[:10]


def test_unsorted_results_page_to_the_end_however_many_match(monkeypatch):
    monkeypatch.setattr(engine, "SNAPSHOT_LIMIT", 10)
    made = make(25)
    page = run("Observation", "_count=4")
    seen = match_ids(page)
    while link(page, "next"):
        page = follow(link(page, "next"))
        seen += match_ids(page)
    assert seen == made
