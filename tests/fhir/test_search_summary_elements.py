"""_summary (true, text, data, count, false) and _elements, with the SUBSETTED tag."""

from __future__ import annotations

import pytest

from integrations.fhir.outcomes import FhirError
from tests.fhir.test_search_support import create, observation, patient, run

pytestmark = pytest.mark.django_db

NARRATIVE = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Peter</div>'}


@pytest.fixture
def data() -> None:
    create(
        patient(
            "p1",
            "Chalmers",
            text=NARRATIVE,
            birthDate="1974-12-25",
            _birthDate={"extension": [{"url": "http://x.org/e", "valueString": "x"}]},
            maritalStatus={"text": "married"},
            photo=[{"contentType": "image/png", "data": "AAAA"}],
            extension=[{"url": "http://x.org/ext", "valueString": "v"}],
        )
    )


def resource(bundle: dict) -> dict:
    return next(e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match")


def subsetted(res: dict) -> bool:
    return any(t.get("code") == "SUBSETTED" for t in res.get("meta", {}).get("tag", []))


def test_summary_true_keeps_summary_elements(data):
    res = resource(run("Patient", "_summary=true"))
    assert set(res) == {"resourceType", "id", "meta", "name", "birthDate", "_birthDate"}
    assert subsetted(res)


def test_summary_text(data):
    res = resource(run("Patient", "_summary=text"))
    assert set(res) == {"resourceType", "id", "meta", "text"}
    assert subsetted(res)


def test_summary_data_drops_the_narrative(data):
    res = resource(run("Patient", "_summary=data"))
    assert "text" not in res
    assert {"name", "photo", "maritalStatus", "extension", "birthDate"} <= set(res)
    assert subsetted(res)


def test_summary_false_and_none_return_everything(data):
    for query in ("_summary=false", ""):
        res = resource(run("Patient", query))
        assert {"text", "photo", "maritalStatus", "extension"} <= set(res)
        assert not subsetted(res)


def test_summary_count(data):
    bundle = run("Patient", "_summary=count")
    assert bundle["total"] == 1
    assert "entry" not in bundle


def test_elements(data):
    res = resource(run("Patient", "_elements=birthDate,maritalStatus"))
    assert set(res) == {"resourceType", "id", "meta", "birthDate", "_birthDate", "maritalStatus"}
    assert subsetted(res)
    res = resource(run("Patient", "_elements=Patient.name"))
    assert set(res) == {"resourceType", "id", "meta", "name"}


def test_elements_keeps_mandatory_elements_and_leaves_includes_whole(data):
    create(observation("o1", subject="Patient/p1", valueString="x"))
    bundle = run("Observation", "_elements=valueString&_include=Observation:subject")
    match = resource(bundle)
    assert set(match) == {"resourceType", "id", "meta", "valueString", "status", "code"}
    included = next(e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "include")
    assert "photo" in included
    assert not subsetted(included)


def test_bad_summary_is_400(data):
    with pytest.raises(FhirError) as error:
        run("Patient", "_summary=maybe")
    assert error.value.status == 400
