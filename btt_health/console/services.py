"""Sign-off of AI reports by clinicians: one atomic function per operation.

- `sign_report(report_id, user, conclusion, expected_version=None)`: a clinician accepts (and may
  edit) the preliminary AI DiagnosticReport. The report becomes `final` in a new version with the
  clinician (a FHIR Practitioner) as `resultsInterpreter`, the edited `conclusion` and a new
  `issued`; its Observations become `final` too (the trust score counts them as clinician-
  confirmed opinions); a Provenance records the signature (target: the new report version,
  agent: the clinician as verifier, activity "verify", a verification `signature`).
- `amend_report(report_id, user, conclusion, reason, expected_version=None)`: a later correction
  of a signed report: a new version with status `amended`, the new conclusion, the clinician
  added to `resultsInterpreter`, and a Provenance with activity "amend" and the reason.

Both write through the FHIR store's service functions (`integrations.fhir.store`), in one
transaction, so the store's `report_finalised` event (btt_health/events.py, emitted by
`integrations/fhir/report_events.py` for every final/amended version, whoever writes it) goes out
with the write, and nothing is written if any step fails. Only clinicians sign, and only reports
of patients they may see (`access`). `expected_version` (the version the clinician was looking at)
turns a concurrent change into `ReportConflict` instead of a silent overwrite.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from btt_health.console import access, accounts
from btt_health.console.models import Role
from integrations.fhir import store
from integrations.fhir.outcomes import FhirError

SIGNABLE = frozenset({"registered", "partial", "preliminary"})
SIGNED = frozenset({"final", "amended", "corrected", "appended"})
MAX_CONCLUSION = 20000
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
SIGNATURE_TYPE = "urn:iso-astm:E1762-95:2013"
VERIFICATION_SIGNATURE = "1.2.840.10065.1.12.1.5"
AUTHOR_SIGNATURE = "1.2.840.10065.1.12.1.1"


class SignOffError(Exception):
    """The report cannot be signed or amended as asked; the message says why."""


class ReportConflict(SignOffError):
    """The report changed since the clinician opened it (another version is current)."""


@dataclass(frozen=True)
class SignOff:
    report_id: str
    version_id: str
    status: str
    provenance_id: str
    practitioner_id: str


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _check_clinician(user: AbstractBaseUser) -> None:
    if accounts.role_of(user) != Role.CLINICIAN:
        raise SignOffError("only clinicians sign reports; your account has another role")


def _load_for_user(report_id: str, user: AbstractBaseUser) -> store.StoredResource:
    """The current report if `user` may see its patient; NotVisible otherwise (as if unknown)."""
    try:
        stored = store.read_resource("DiagnosticReport", report_id)
    except FhirError:
        raise access.NotVisible(f"DiagnosticReport {report_id} not found") from None
    subject = store.parse_relative_reference(((stored.as_dict().get("subject") or {}).get("reference")) or "")
    if subject is None or subject[0] != "Patient" or not access.patient_visible(user, subject[1]):
        raise access.NotVisible(f"DiagnosticReport {report_id} not found")
    return stored


def _clean_conclusion(conclusion: str) -> str:
    text = (conclusion or "").replace("\r\n", "\n").strip()
    if not text:
        raise SignOffError("the conclusion must not be empty")
    if len(text) > MAX_CONCLUSION:
        raise SignOffError(f"the conclusion is longer than {MAX_CONCLUSION} characters")
    return text


def _check_version(stored: store.StoredResource, expected_version: str | int | None) -> None:
    if expected_version not in (None, "") and str(expected_version) != str(stored.version_id):
        raise ReportConflict(
            f"the report was changed meanwhile (you saw version {expected_version}, version "
            f"{stored.version_id} is current): reload it and sign again"
        )


def _interpreter(practitioner_id: str, user: AbstractBaseUser) -> dict:
    return {"reference": f"Practitioner/{practitioner_id}", "display": accounts.display_name(user)}


def _finalise_observations(report: dict) -> None:
    """Make the report's preliminary Observations final (new versions), as the clinician signed them."""
    for reference in report.get("result") or []:
        parsed = store.parse_relative_reference(reference.get("reference") or "")
        if parsed is None or parsed[0] != "Observation":
            continue
        current = store.read_resource("Observation", parsed[1])
        observation = current.as_dict()
        if observation.get("status") in ("registered", "preliminary"):
            observation["status"] = "final"
            store.update_resource("Observation", parsed[1], observation, if_match=current.version_id)


def _provenance(
    report_id: str,
    version_id: int,
    practitioner_id: str,
    user: AbstractBaseUser,
    activity: str,
    reason: str = "",
) -> dict:
    now = _now()
    who = _interpreter(practitioner_id, user)
    activity_coding = (
        {"system": PARTICIPATION_TYPE, "code": "VRF", "display": "verifier"}
        if activity == "verify"
        else {"system": DATA_OPERATION, "code": "UPDATE", "display": "revise"}
    )
    provenance: dict = {
        "resourceType": "Provenance",
        "target": [{"reference": f"DiagnosticReport/{report_id}/_history/{version_id}"}],
        "recorded": now,
        "activity": {"coding": [activity_coding], "text": "sign" if activity == "verify" else "amend"},
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": PARTICIPANT_TYPE,
                            "code": "verifier" if activity == "verify" else "author",
                            "display": "Verifier" if activity == "verify" else "Author",
                        }
                    ]
                },
                "who": who,
            }
        ],
        "signature": [
            {
                "type": [
                    {
                        "system": SIGNATURE_TYPE,
                        "code": VERIFICATION_SIGNATURE if activity == "verify" else AUTHOR_SIGNATURE,
                        "display": "Verification Signature" if activity == "verify" else "Author's Signature",
                    }
                ],
                "when": now,
                "who": who,
            }
        ],
    }
    if reason:
        provenance["reason"] = [{"text": reason}]
    return provenance


@transaction.atomic
def sign_report(
    report_id: str, user: AbstractBaseUser, conclusion: str, *, expected_version: str | int | None = None
) -> SignOff:
    """Make the preliminary DiagnosticReport `report_id` final, signed by `user` (see the module doc).

    Raises `access.NotVisible` (unknown report or patient of another organization), `SignOffError`
    (not a clinician, empty conclusion, report already signed or not signable) or `ReportConflict`.
    """
    _check_clinician(user)
    stored = _load_for_user(report_id, user)
    _check_version(stored, expected_version)
    report = stored.as_dict()
    status = report.get("status")
    if status in SIGNED:
        raise SignOffError(f"the report is already signed ({status}); amend it to correct it")
    if status not in SIGNABLE:
        raise SignOffError(f"a report with status {status!r} cannot be signed")
    text = _clean_conclusion(conclusion)
    practitioner_id = accounts.ensure_practitioner(user)
    report["status"] = "final"
    report["conclusion"] = text
    report["issued"] = _now()
    report["resultsInterpreter"] = [_interpreter(practitioner_id, user)]
    _finalise_observations(report)
    written = store.update_resource("DiagnosticReport", report_id, report, if_match=stored.version_id).stored
    provenance = store.create_resource(
        _provenance(report_id, written.version_id, practitioner_id, user, "verify")
    ).stored
    return SignOff(report_id, str(written.version_id), "final", provenance.logical_id, practitioner_id)


@transaction.atomic
def amend_report(
    report_id: str,
    user: AbstractBaseUser,
    conclusion: str,
    reason: str,
    *,
    expected_version: str | int | None = None,
) -> SignOff:
    """Correct the signed DiagnosticReport `report_id`: a new version with status `amended`.

    `reason` (why it is corrected) is required and recorded in the Provenance. Raises as
    `sign_report` does; a report that was never signed is signed, not amended.
    """
    _check_clinician(user)
    stored = _load_for_user(report_id, user)
    _check_version(stored, expected_version)
    report = stored.as_dict()
    if report.get("status") not in SIGNED:
        raise SignOffError("only a signed report can be amended; sign it first")
    text = _clean_conclusion(conclusion)
    reason = (reason or "").strip()
    if not reason:
        raise SignOffError("say why the report is amended")
    if text == (report.get("conclusion") or "").strip():
        raise SignOffError("the conclusion is unchanged: nothing to amend")
    practitioner_id = accounts.ensure_practitioner(user)
    report["status"] = "amended"
    report["conclusion"] = text
    report["issued"] = _now()
    interpreters = [
        i
        for i in report.get("resultsInterpreter") or []
        if i.get("reference") != f"Practitioner/{practitioner_id}"
    ]
    report["resultsInterpreter"] = [*interpreters, _interpreter(practitioner_id, user)]
    written = store.update_resource("DiagnosticReport", report_id, report, if_match=stored.version_id).stored
    provenance = store.create_resource(
        _provenance(report_id, written.version_id, practitioner_id, user, "amend", reason)
    ).stored
    return SignOff(report_id, str(written.version_id), "amended", provenance.logical_id, practitioner_id)
