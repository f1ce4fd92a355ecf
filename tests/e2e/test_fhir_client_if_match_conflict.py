"""Optimistic locking: two fhirpy clients update the same version with If-Match at the same time.

Both clients read version N, then both PUT with `If-Match: W/"N"` released together by a barrier
from two threads. Exactly one update may win (200, version N+1); the other must get 412 with an
OperationOutcome, and the stored resource must be the winner's. The loser then re-reads and
re-applies its change, as a well-behaved EHR does.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import requests
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import MultipleResourcesFound, OperationOutcome

pytestmark = pytest.mark.e2e

TIMEOUT_S = 30
ROUNDS = 5


@dataclass
class Outcome:
    """What one update attempt got back."""

    status: int | None = None
    body: dict = field(default_factory=dict)
    error: BaseException | None = None


def _update_with_if_match(
    make_client: Callable[..., SyncFHIRClient], resource: dict, barrier: threading.Barrier, outcome: Outcome
) -> None:
    """PUT `resource` with If-Match on its meta.versionId once both threads are ready."""
    sink: list[requests.Response] = []
    writer = make_client(if_match=f'W/"{resource["meta"]["versionId"]}"', sink=sink)
    bound = writer.resource("Patient", **resource)
    try:
        barrier.wait(timeout=TIMEOUT_S)
        bound.save()
    except MultipleResourcesFound as exc:  # fhirpy's exception for any 412
        outcome.error = exc
    except BaseException as exc:  # reported by the test, not lost in the thread
        outcome.error = exc
    if sink:
        outcome.status = sink[-1].status_code
        outcome.body = sink[-1].json() if sink[-1].content else {}


def test_two_clients_updating_the_same_version_exactly_one_gets_412(
    make_fhir_client: Callable[..., SyncFHIRClient],
) -> None:
    creator = make_fhir_client()
    patient = creator.resource(
        "Patient",
        identifier=[{"system": "urn:btt:e2e:mrn", "value": uuid.uuid4().hex}],
        name=[{"family": "Moreau", "given": ["Camille"]}],
        gender="female",
    )
    patient.save()
    clinic_a = make_fhir_client()
    clinic_b = make_fhir_client()

    for round_no in range(1, ROUNDS + 1):
        # Both clients read the same version.
        seen_a = clinic_a.get("Patient", patient.id)
        seen_b = clinic_b.get("Patient", patient.id)
        assert seen_a["meta"]["versionId"] == seen_b["meta"]["versionId"] == str(round_no)
        change_a = {**seen_a, "telecom": [{"system": "phone", "value": f"555-01{round_no:02d}-A"}]}
        change_b = {**seen_b, "telecom": [{"system": "phone", "value": f"555-01{round_no:02d}-B"}]}

        barrier = threading.Barrier(2)
        outcomes = {"A": Outcome(), "B": Outcome()}
        threads = [
            threading.Thread(
                target=_update_with_if_match, args=(make_fhir_client, change, barrier, outcomes[n])
            )
            for n, change in (("A", change_a), ("B", change_b))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=2 * TIMEOUT_S)
            assert not thread.is_alive(), "an update did not finish"

        statuses = sorted(o.status for o in outcomes.values())
        assert statuses == [200, 412], f"round {round_no}: {outcomes}"
        winner = next(name for name, o in outcomes.items() if o.status == 200)
        loser = next(o for o in outcomes.values() if o.status == 412)
        assert isinstance(loser.error, MultipleResourcesFound)
        assert loser.body["resourceType"] == "OperationOutcome"
        assert loser.body["issue"][0]["severity"] in ("error", "fatal")
        assert outcomes[winner].error is None

        current = creator.get("Patient", patient.id)
        assert current["meta"]["versionId"] == str(round_no + 1)
        assert current["telecom"][0]["value"].endswith(f"-{winner}"), "the stored version is the winner's"

    history = creator.execute(f"Patient/{patient.id}/_history", method="get", params={"_count": 50})
    assert len(history["entry"]) == ROUNDS + 1, "one version per winning update, none for the losers"


def test_the_losing_client_re_reads_and_its_retry_succeeds(
    make_fhir_client: Callable[..., SyncFHIRClient],
) -> None:
    creator = make_fhir_client()
    patient = creator.resource("Patient", name=[{"family": "Haddad", "given": ["Rami"]}], gender="male")
    patient.save()
    stale = creator.get("Patient", patient.id)

    patient["birthDate"] = "1979-04-12"
    patient.save()  # someone else's update: the resource is now at version 2

    responses: list[requests.Response] = []
    late = make_fhir_client(if_match=f'W/"{stale["meta"]["versionId"]}"', sink=responses)
    with pytest.raises(MultipleResourcesFound):
        late.resource("Patient", **{**stale, "gender": "other"}).save()
    assert responses[-1].status_code == 412
    outcome = responses[-1].json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "2" in outcome["issue"][0]["diagnostics"], "the outcome says which version is current"

    fresh = creator.get("Patient", patient.id)
    retry = make_fhir_client(if_match=f'W/"{fresh["meta"]["versionId"]}"', sink=responses)
    saved = retry.resource("Patient", **{**fresh, "gender": "other"}).save()
    assert responses[-1].status_code == 200
    assert saved["meta"]["versionId"] == "3"
    final = creator.get("Patient", patient.id)
    assert (final["gender"], final["birthDate"]) == ("other", "1979-04-12"), "neither change was lost"


def test_malformed_if_match_is_a_400_operation_outcome(
    make_fhir_client: Callable[..., SyncFHIRClient],
) -> None:
    creator = make_fhir_client()
    patient = creator.resource("Patient", name=[{"family": "Ito"}])
    patient.save()
    responses: list[requests.Response] = []
    writer = make_fhir_client(if_match="version-one", sink=responses)
    with pytest.raises(OperationOutcome) as raised:
        writer.resource("Patient", **creator.get("Patient", patient.id)).save()
    assert responses[-1].status_code == 400
    assert raised.value.resource["resourceType"] == "OperationOutcome"
    assert creator.get("Patient", patient.id)["meta"]["versionId"] == "1", "nothing was written"
