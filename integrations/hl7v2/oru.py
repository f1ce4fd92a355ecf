"""FHIR -> HL7 v2.5.1 ORU^R01: a finalised DiagnosticReport as the result message sent to destinations.

`ReportContent.load(payload)` reads what the message needs from the FHIR store (the report at the
version the `report_finalised` event names, its Patient, ServiceRequests and result Observations);
`build_oru(content, control_id=..., destination=...)` writes the message:

    MSH  ORU^R01^ORU_R01, version 2.5.1, UTF-8 (MSH-18 UNICODE UTF-8), MSH-5/6 from the destination
    PID  PID-3 the Patient's identifiers (assigning authority from the system), PID-5, -7, -8
    ORC  RE, placer / filler order numbers (ServiceRequest identifiers typed PLAC / FILL)
    OBR  OBR-2/-3 order numbers, OBR-4 the report code, OBR-7 effective, OBR-18 accession number,
         OBR-22 issued, OBR-24 the category, OBR-25 result status (F final, C amended/corrected/appended)
    OBX  one per result Observation (NM with units, ST, CWE), then the conclusion (TX) and each
         conclusion code (CWE); OBX-11 F or C

Text is escaped for ER7; line breaks become `\\.br\\`.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from django.conf import settings

from integrations.fhir import store
from integrations.fhir.outcomes import FhirError
from integrations.hl7v2.er7 import DEFAULT_ENCODING, build_segment, join_components
from integrations.hl7v2.mapping import CODING_SYSTEMS, V2_0203
from integrations.hl7v2.models import Hl7Destination

ENC = DEFAULT_ENCODING
_SYSTEM_CODES = {uri: code for code, uri in reversed(list(CODING_SYSTEMS.items()))}
_GENDER = {"female": "F", "male": "M", "other": "O", "unknown": "U"}
_RESULT_STATUS = {"final": "F", "amended": "C", "corrected": "C", "appended": "C"}


@dataclass
class ReportContent:
    """What an ORU is made of, read from the FHIR store."""

    payload: dict
    report: dict
    patient: dict | None
    service_requests: list[dict] = field(default_factory=list)
    observations: list[dict] = field(default_factory=list)

    @classmethod
    def load(cls, payload: dict) -> ReportContent:
        report = store.vread_resource(
            "DiagnosticReport", payload["diagnostic_report_id"], payload["version_id"]
        ).as_dict()
        patient = _read("Patient", payload["fhir_patient_id"]) if payload["fhir_patient_id"] else None
        requests = [r for r in (_read("ServiceRequest", i) for i in payload["service_request_ids"]) if r]
        observations = []
        for result in report.get("result") or []:
            parsed = store.parse_relative_reference((result or {}).get("reference") or "")
            if parsed and parsed[0] == "Observation":
                observation = _read("Observation", parsed[1])
                if observation:
                    observations.append(observation)
        return cls(payload, report, patient, requests, observations)


def _read(resource_type: str, logical_id: str) -> dict | None:
    try:
        return store.read_resource(resource_type, logical_id).as_dict()
    except FhirError:
        return None


def build_oru(content: ReportContent, *, control_id: str, destination: Hl7Destination) -> str:
    """The ORU^R01 message text (segments ended by CR)."""
    report = content.report
    status = _RESULT_STATUS.get(report.get("status", ""), "F")
    segments = [
        build_segment(
            ENC,
            "MSH",
            [
                ENC.msh2,
                ENC.escape_text(settings.BTT_HL7_APPLICATION),
                ENC.escape_text(settings.BTT_HL7_FACILITY),
                ENC.escape_text(destination.receiving_application),
                ENC.escape_text(destination.receiving_facility),
                dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S+0000"),
                "",
                "ORU^R01^ORU_R01",
                control_id,
                "P",
                "2.5.1",
                "",
                "",
                "AL",
                "NE",
                "",
                "UNICODE UTF-8",
            ],
        ),
        _pid(content.patient),
    ]
    placer, filler = _order_numbers(content.service_requests)
    segments.append(build_segment(ENC, "ORC", ["RE", placer, filler, "", "CM"]))
    category = ((report.get("category") or [{}])[0].get("coding") or [{}])[0].get("code", "")
    segments.append(
        build_segment(
            ENC,
            "OBR",
            [
                "1",
                placer,
                filler,
                _cwe(report.get("code")),
                "",
                "",
                _ts(report.get("effectiveDateTime") or (report.get("effectivePeriod") or {}).get("start")),
                *[""] * 10,
                ENC.escape_text(content.payload.get("accession_number") or ""),
                "",
                "",
                "",
                _ts(report.get("issued")),
                "",
                ENC.escape_text(category[:3]) if category else "",
                status,
            ],
        )
    )
    number = 0
    for observation in content.observations:
        value_type, value, units = _observation_value(observation)
        if not value_type:
            continue
        number += 1
        segments.append(
            build_segment(
                ENC,
                "OBX",
                [
                    str(number),
                    value_type,
                    _cwe(observation.get("code")),
                    "",
                    value,
                    units,
                    "",
                    "",
                    "",
                    "",
                    status,
                ],
            )
        )
    conclusion = report.get("conclusion")
    if conclusion:
        number += 1
        segments.append(
            build_segment(
                ENC,
                "OBX",
                [
                    str(number),
                    "TX",
                    "CONCLUSION^Conclusion^L",
                    "",
                    ENC.escape_text(conclusion),
                    "",
                    "",
                    "",
                    "",
                    "",
                    status,
                ],
            )
        )
    for concept in report.get("conclusionCode") or []:
        number += 1
        segments.append(
            build_segment(
                ENC,
                "OBX",
                [
                    str(number),
                    "CWE",
                    "CONCLUSION_CODE^Conclusion code^L",
                    "",
                    _cwe(concept),
                    "",
                    "",
                    "",
                    "",
                    "",
                    status,
                ],
            )
        )
    return "\r".join(segments) + "\r"


def _pid(patient: dict | None) -> str:
    if patient is None:
        return build_segment(ENC, "PID", ["1"])
    identifiers = []
    for identifier in patient.get("identifier") or []:
        if not identifier.get("value"):
            continue
        type_code = ((identifier.get("type") or {}).get("coding") or [{}])[0].get("code", "")
        # The authority is already encoded (subcomponents), so the CX is joined here, not escaped again.
        cx = [
            ENC.escape_text(identifier["value"]),
            "",
            "",
            _authority(identifier.get("system") or ""),
            ENC.escape_text(type_code),
        ]
        identifiers.append(ENC.component.join(cx).rstrip(ENC.component))
    identifiers.append(
        f"{ENC.escape_text(patient['id'])}^^^{ENC.escape_text(settings.BTT_HL7_APPLICATION)}^PI"
    )
    name = (patient.get("name") or [{}])[0]
    xpn = join_components(
        ENC, name.get("family", ""), " ".join(name.get("given", [])[:1]), " ".join(name.get("given", [])[1:])
    )
    birth = re.sub(r"\D", "", patient.get("birthDate", ""))
    return build_segment(
        ENC,
        "PID",
        [
            "1",
            "",
            ENC.repetition.join(identifiers),
            "",
            xpn,
            "",
            birth,
            _GENDER.get(patient.get("gender", ""), ""),
        ],
    )


def _authority(system: str) -> str:
    """HD of an identifier system: `urn:oid:X` -> `&X&ISO`, ours -> the namespace, a URI -> `&URI&URI`."""
    sub = ENC.subcomponent
    if not system or system == settings.BTT_HL7_PATIENT_ID_SYSTEM:
        return ""
    if system.startswith("urn:oid:"):
        return f"{sub}{system[8:]}{sub}ISO"
    if system.startswith("urn:btt-health:issuer:"):
        from urllib.parse import unquote

        return ENC.escape_text(unquote(system[len("urn:btt-health:issuer:") :]))
    return f"{sub}{ENC.escape_text(system)}{sub}URI"


def _order_numbers(requests: list[dict]) -> tuple[str, str]:
    placer = filler = ""
    for request in requests:
        for identifier in request.get("identifier") or []:
            code = ((identifier.get("type") or {}).get("coding") or [{}])[0]
            if code.get("system") != V2_0203:
                continue
            if code.get("code") == "PLAC" and not placer:
                placer = ENC.escape_text(identifier.get("value", ""))
            elif code.get("code") == "FILL" and not filler:
                filler = ENC.escape_text(identifier.get("value", ""))
    return placer, filler


def _cwe(concept: dict | None) -> str:
    if not concept:
        return ""
    coding = (concept.get("coding") or [{}])[0]
    system = _SYSTEM_CODES.get(coding.get("system", ""), "L" if coding.get("code") else "")
    return join_components(
        ENC, coding.get("code", ""), coding.get("display") or concept.get("text", ""), system
    )


def _ts(value: str | None) -> str:
    """An HL7 DTM from a FHIR date/dateTime/instant (offset kept, seconds precision)."""
    if not value:
        return ""
    match = re.match(
        r"^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?(?:T(\d{2}):(\d{2})(?::(\d{2}))?(?:\.\d+)?)?(Z|[+-]\d{2}:\d{2})?$",
        value,
    )
    if not match:
        return ""
    year, month, day, hour, minute, second, zone = match.groups()
    text = "".join(p for p in (year, month, day, hour, minute, second or ("00" if hour else None)) if p)
    if zone:
        text += "+0000" if zone == "Z" else zone.replace(":", "")
    return text


def _observation_value(observation: dict) -> tuple[str, str, str]:
    """(OBX-2 value type, OBX-5, OBX-6) of an Observation's value; ("", ...) when it has none."""
    if "valueQuantity" in observation:
        quantity = observation["valueQuantity"]
        value = quantity.get("value")
        units = join_components(
            ENC,
            quantity.get("code") or quantity.get("unit", ""),
            quantity.get("unit", ""),
            "UCUM" if quantity.get("system") == "http://unitsofmeasure.org" else "",
        )
        return "NM", "" if value is None else f"{value:g}" if isinstance(value, float) else str(value), units
    if "valueString" in observation:
        return "ST", ENC.escape_text(observation["valueString"]), ""
    if "valueCodeableConcept" in observation:
        return "CWE", _cwe(observation["valueCodeableConcept"]), ""
    if "valueBoolean" in observation:
        return "ST", "true" if observation["valueBoolean"] else "false", ""
    if "valueInteger" in observation:
        return "NM", str(observation["valueInteger"]), ""
    return "", "", ""
