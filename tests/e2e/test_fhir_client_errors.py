"""Errors a FHIR client sees are OperationOutcomes that say what was wrong, and where.

fhirpy raises its `OperationOutcome` exception (carrying the server's resource) for a 400; the
status codes themselves are read from the responses recorded by a requests hook. Bodies fhirpy
cannot send (broken JSON) go through `requests`, the HTTP library fhirpy itself uses.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
import requests
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import AuthorizationError, OperationOutcome, ResourceNotFound

pytestmark = pytest.mark.e2e

TIMEOUT_S = 30


def _expressions(outcome: dict) -> list[str]:
    return [x for issue in outcome["issue"] for x in issue.get("expression", [])]


def _assert_outcome(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"], "an OperationOutcome has at least one issue"
    for issue in outcome["issue"]:
        assert issue["severity"] in ("fatal", "error", "warning", "information")
        assert issue["code"]
        assert issue.get("diagnostics"), "each issue says in words what is wrong"
    return outcome


@pytest.mark.parametrize(
    ("fields", "element"),
    [
        ({"birthDate": "1970-13-45"}, "Patient.birthDate"),
        ({"active": "sometimes"}, "Patient.active"),
        ({"name": [{"family": "Diaz", "given": "Lucia"}]}, "Patient.name[0].given"),
        ({"favouriteColour": "teal"}, "Patient.favouriteColour"),
    ],
)
def test_invalid_resource_is_400_naming_the_element(
    fhir_client: SyncFHIRClient, responses: list[requests.Response], fields: dict, element: str
) -> None:
    patient = fhir_client.resource("Patient", gender="female", **fields)

    with pytest.raises(OperationOutcome) as raised:
        patient.save()

    outcome = _assert_outcome(responses[-1], 400)
    assert raised.value.resource == outcome
    assert any(x == element or x.startswith(element) for x in _expressions(outcome)), outcome
    assert patient.id is None


def test_reference_to_a_missing_resource_is_400_naming_the_reference(
    fhir_client: SyncFHIRClient, responses: list[requests.Response]
) -> None:
    missing = f"Patient/missing-{uuid.uuid4().hex[:16]}"
    observation = fhir_client.resource(
        "Observation",
        status="final",
        code={"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        subject={"reference": missing},
    )

    with pytest.raises(OperationOutcome):
        observation.save()

    outcome = _assert_outcome(responses[-1], 400)
    assert "Observation.subject.reference" in _expressions(outcome), outcome
    assert any(missing in issue["diagnostics"] for issue in outcome["issue"])


def test_body_type_differing_from_the_url_is_400(
    fhir_client: SyncFHIRClient, responses: list[requests.Response]
) -> None:
    patient = fhir_client.resource("Patient", name=[{"family": "Kowalski"}])
    patient.save()

    with pytest.raises(OperationOutcome):
        fhir_client.execute(
            f"Patient/{patient.id}",
            method="put",
            data={"resourceType": "Observation", "id": patient.id, "status": "final"},
        )
    _assert_outcome(responses[-1], 400)
    assert fhir_client.get("Patient", patient.id)["meta"]["versionId"] == "1"


def test_unknown_resource_type_is_404(
    fhir_client: SyncFHIRClient, responses: list[requests.Response]
) -> None:
    with pytest.raises(ResourceNotFound):
        fhir_client.resources("Spaceship").fetch()
    _assert_outcome(responses[-1], 404)


def test_broken_json_is_400(fhir_base_url: str, e2e_token: str) -> None:
    response = requests.post(
        f"{fhir_base_url}/Patient",
        data=b'{"resourceType": "Patient", "name": [',
        headers={"Authorization": f"Bearer {e2e_token}", "Content-Type": "application/fhir+json"},
        timeout=TIMEOUT_S,
    )
    _assert_outcome(response, 400)


def test_missing_or_wrong_token_is_401_with_an_outcome(fhir_base_url: str) -> None:
    for authorization in (None, "Bearer btt_not-a-real-token"):
        recorded: list[requests.Response] = []
        record: Callable[..., None] = lambda response, *args, sink=recorded, **kwargs: sink.append(response)  # noqa: E731
        anonymous = SyncFHIRClient(
            fhir_base_url,
            authorization=authorization,
            requests_config={"timeout": TIMEOUT_S, "hooks": {"response": [record]}},
        )
        with pytest.raises(AuthorizationError):
            anonymous.resources("Patient").limit(1).fetch()
        _assert_outcome(recorded[-1], 401)
        assert recorded[-1].headers["WWW-Authenticate"].startswith("Bearer")
