"""Unknown parameters (lenient: ignored and reported; strict: 400), bad modifiers and types."""

from __future__ import annotations

import pytest

from integrations.fhir.outcomes import FhirError
from tests.fhir.test_search_support import create, ids, match_ids, observation, outcome_issues, run

pytestmark = pytest.mark.django_db


@pytest.fixture
def data() -> None:
    create(observation("o1", code="a"))
    create(observation("o2", code="b"))


def test_lenient_ignores_unknown_parameters_and_reports_them_first(data):
    bundle = run("Observation", "code=a&foo=bar&_text=x&_contained=true")
    assert match_ids(bundle) == ["o1"]
    first = bundle["entry"][0]
    assert first["search"]["mode"] == "outcome"
    assert first["resource"]["resourceType"] == "OperationOutcome"
    issues = outcome_issues(bundle)
    assert [i["severity"] for i in issues] == ["warning"] * 3
    text = " ".join(i["diagnostics"] for i in issues)
    for name in ("'foo'", "'_text'", "'_contained'"):
        assert name in text


def test_strict_refuses_unknown_parameters(data):
    with pytest.raises(FhirError) as error:
        run("Observation", "code=a&foo=bar", strict=True)
    assert error.value.status == 400
    assert "foo" in str(error.value)


def test_format_parameters_are_not_reported(data):
    bundle = run("Observation", "code=a&_format=json&_pretty=true", strict=True)
    assert match_ids(bundle) == ["o1"]
    assert outcome_issues(bundle) == []


@pytest.mark.parametrize(
    "query",
    [
        "code:exact=a",  # string modifier on a token
        "code:below=a",  # terminology modifiers are not supported
        "date:contains=2020",
        "subject:text=x",
        "code:missing=maybe",
        "value-quantity:nonsense=1",
    ],
)
def test_unknown_or_unsupported_modifier_is_400_even_when_lenient(query, data):
    with pytest.raises(FhirError) as error:
        run("Observation", query)
    assert error.value.status == 400
    assert query.split(":")[0] in str(error.value)


def test_unknown_resource_type_is_404():
    with pytest.raises(FhirError) as error:
        run("Nope", "")
    assert error.value.status == 404


def test_error_names_parameter_and_value(data):
    with pytest.raises(FhirError) as error:
        run("Observation", "date=2020-99")
    message = str(error.value)
    assert "'date'" in message
    assert "'2020-99'" in message
    assert error.value.issues[0].code == "value"


def test_no_parameters_returns_every_resource_of_the_type(data):
    create({"resourceType": "Patient", "id": "p"})
    assert ids("Observation", "") == {"o1", "o2"}
