"""The `report_finalised` event (btt_health/events.py), emitted from the FHIR store's writes.

A post-write hook on DiagnosticReport (`hooks.on_write`, registered in `FhirConfig.ready()`):
whatever writes a DiagnosticReport (the REST API, a transaction Bundle, the clinician viewer, a
service function), a version that finalises it announces `report_finalised`, inside the writing
transaction. A version finalises the report when

- its status is `final`, `amended`, `corrected` or `appended` and the version before it had another
  status (or there was none: created final), or
- its status is `amended`, `corrected` or `appended` (every correction counts, even after another).

Rewriting a final report as final again (a typo fixed without changing the status) announces
nothing. The payload is documented in btt_health/events.py.
"""

from __future__ import annotations

from btt_health.events import REPORT_FINALISED, emit
from integrations.fhir import hooks, store
from integrations.fhir.outcomes import FhirError

FINAL_STATUSES = frozenset({"final", "amended", "corrected", "appended"})
CORRECTION_STATUSES = frozenset({"amended", "corrected", "appended"})
V2_0203_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0203"


def finalises(status: str | None, previous_status: str | None) -> bool:
    """Whether a version with `status` after one with `previous_status` (None: none) finalises."""
    if status not in FINAL_STATUSES:
        return False
    return status in CORRECTION_STATUSES or previous_status != status


def on_diagnostic_report_written(written: hooks.WrittenVersion) -> None:
    """The DiagnosticReport hook: emit `report_finalised` when this version finalises the report."""
    status = written.resource.get("status")
    if status not in FINAL_STATUSES:
        return
    previous = written.previous
    if not finalises(status, previous.get("status") if previous else None):
        return
    emit(REPORT_FINALISED, report_finalised_payload(written))


def report_finalised_payload(written: hooks.WrittenVersion) -> dict:
    """The event's payload for a written DiagnosticReport version (reads the orders and studies)."""
    report = written.resource
    service_request_ids = _local_ids(report.get("basedOn"), "ServiceRequest")
    imaging_study_ids = _local_ids(report.get("imagingStudy"), "ImagingStudy")
    subject = _local_ids([report.get("subject") or {}], "Patient")
    return {
        "event_id": f"report_finalised:{written.logical_id}:{written.version_id}",
        "diagnostic_report_id": written.logical_id,
        "version_id": str(written.version_id),
        "status": report["status"],
        "fhir_patient_id": subject[0] if subject else "",
        "imaging_study_ids": imaging_study_ids,
        "service_request_ids": service_request_ids,
        "accession_number": _accession_number(
            [("ServiceRequest", i) for i in service_request_ids]
            + [("ImagingStudy", i) for i in imaging_study_ids]
        ),
        "finalised_at": store.format_instant(written.last_updated),
    }


def register() -> None:
    """Install the hook (idempotent); called from `FhirConfig.ready()`."""
    hooks.on_write("DiagnosticReport", on_diagnostic_report_written)


def _local_ids(references: list | None, resource_type: str) -> list[str]:
    """Logical ids of the `resource_type/<id>` references among `references` (others skipped)."""
    ids = []
    for reference in references or []:
        parsed = store.parse_relative_reference((reference or {}).get("reference") or "")
        if parsed is not None and parsed[0] == resource_type and parsed[1] not in ids:
            ids.append(parsed[1])
    return ids


def _accession_number(targets: list[tuple[str, str]]) -> str:
    for resource_type, logical_id in targets:
        try:
            resource = store.read_resource(resource_type, logical_id).as_dict()
        except FhirError:  # deleted since: the report still goes out, without it
            continue
        for identifier in resource.get("identifier") or []:
            codings = (identifier.get("type") or {}).get("coding") or []
            if identifier.get("value") and any(
                c.get("system") == V2_0203_SYSTEM and c.get("code") == "ACSN" for c in codings
            ):
                return identifier["value"]
    return ""
