"""HL7 v2 segments -> FHIR R4 content: Patient (PID, MRG) and ServiceRequest (ORC, OBR, TQ1, IPC).

Pure functions: they read segments (`er7.Segment`) and return FHIR JSON fragments, raising
`Hl7Error` with the segment, field and component at fault when a value cannot be used. Nothing
here reads or writes the database (`services.py` does).

The Patients it builds are valid R4 by construction, which lets the store skip validating them
again (`store.create_resource(checked=True)`): every value is a non-empty string from the message,
a code from a table here or a code with its spaces normalised, a date or dateTime from
`reference.parse_datetime`, or a boolean. tests/hl7v2/test_patient_mapping_valid.py holds the
mapping to that over messages of every kind the tests have; a change here that adds an element
must keep it so.

Conventions, after the HL7 v2-to-FHIR mapping guide where it has one:

- An empty field means "no information" (the stored value stays); `""` (two double quotes) means
  "delete the stored value".
- Identifier systems: an assigning authority's universal ID of type ISO gives `urn:oid:<oid>`,
  URI gives the URI; a namespace ID that is an OID or URI is used the same way, other text gives
  `urn:btt-health:issuer:<text>` (the DICOM node maps an Issuer of Patient ID the same way, so a
  patient matches across both); no authority gives `BTT_HL7_PATIENT_ID_SYSTEM` for patients,
  `BTT_HL7_ACCESSION_SYSTEM` for accession numbers and no system for order numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote

from django.conf import settings

from integrations.hl7v2 import reference
from integrations.hl7v2.ack import Hl7Error
from integrations.hl7v2.er7 import Segment

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
DELETE = '""'

_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")

# Coding systems of CE/CWE (HL7 table 0396) -> FHIR system URIs.
CODING_SYSTEMS = {
    "LN": "http://loinc.org",
    "SCT": "http://snomed.info/sct",
    "SNM": "http://snomed.info/sct",
    "SNOMED": "http://snomed.info/sct",
    "C4": "http://www.ama-assn.org/go/cpt",
    "CPT": "http://www.ama-assn.org/go/cpt",
    "CPT4": "http://www.ama-assn.org/go/cpt",
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "I10C": "http://hl7.org/fhir/sid/icd-10-cm",
    "I9C": "http://hl7.org/fhir/sid/icd-9-cm",
    "RADLEX": "http://radlex.org",
    "RID": "http://radlex.org",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "UCUM": "http://unitsofmeasure.org",
}

# HL7 table 0001 -> FHIR administrative gender.
GENDERS = {"F": "female", "M": "male", "O": "other", "U": "unknown", "A": "other", "N": "other"}
NAME_USES = {"L": "official", "D": "usual", "M": "maiden", "N": "nickname", "A": "usual", "B": "old"}
ADDRESS_USES = {"H": "home", "B": "work", "O": "work", "C": "temp", "BA": "old", "BDL": "home"}

# ORC-1 order control (table 0119) -> ServiceRequest.status; None: take ORC-5 (order status).
ORDER_CONTROL_STATUS: dict[str, str | None] = {
    "NW": "active",
    "OK": "active",
    "XO": "active",
    "XX": "active",
    "XR": "active",
    "SN": "active",
    "NA": "active",
    "RL": "active",
    "RO": "active",
    "SC": None,
    "SS": None,
    "CA": "revoked",
    "CR": "revoked",
    "OC": "revoked",
    "OD": "revoked",
    "DC": "revoked",
    "DR": "revoked",
    "HD": "on-hold",
    "HR": "on-hold",
    "OH": "on-hold",
}
# ORC-5 order status (table 0038) -> ServiceRequest.status.
ORDER_STATUS = {
    "A": "active",
    "IP": "active",
    "SC": "active",
    "CM": "completed",
    "CA": "revoked",
    "DC": "revoked",
    "HD": "on-hold",
    "ER": "entered-in-error",
    "RP": "revoked",
}
PRIORITIES = {"S": "stat", "A": "asap", "R": "routine", "P": "routine", "C": "routine", "T": "routine"}


# --- Small readers -------------------------------------------------------------------------------


def identifier_system(
    namespace: str, universal_id: str, universal_type: str, default: str | None
) -> str | None:
    """The FHIR identifier system of an assigning authority (HD); see the module docstring."""
    universal_id, namespace, kind = universal_id.strip(), namespace.strip(), universal_type.strip().upper()
    if universal_id:
        if kind in ("URI", "URL") and _URI.match(universal_id):
            return universal_id
        if _OID.match(universal_id):
            return f"urn:oid:{universal_id}"
    if namespace:
        if _OID.match(namespace):
            return f"urn:oid:{namespace}"
        if _URI.match(namespace):
            return namespace
        return f"urn:btt-health:issuer:{quote(namespace, safe='')}"
    return default


def datetime_value(
    segment: Segment, number: int, version: str, component: int = 1
) -> reference.HL7DateTime | None:
    """A DT/DTM/TS field (its first component) read, or None when empty; Hl7Error 102 when invalid."""
    value = segment.value(number, component)
    if not value or value == DELETE:
        return None
    try:
        return reference.parse_datetime(value)
    except ValueError:
        raise Hl7Error(
            f"{reference.field_description(segment.name, number, version)}: {value!r} is not an HL7 "
            "date/time (YYYY[MM[DD[HHMM[SS[.SSSS]]]]][+/-ZZZZ])",
            code="102",
            segment=segment.name,
            occurrence=segment.occurrence,
            field=number,
            component=component,
        ) from None


def codeable_concept(components: list[str]) -> dict | None:
    """A CodeableConcept from CE/CWE components (code^text^system^alt code^alt text^alt system)."""
    components = [*components, "", "", "", "", "", ""]
    codings = []
    for code, display, system in ((0, 1, 2), (3, 4, 5)):
        if components[code]:
            coding: dict = {}
            uri = CODING_SYSTEMS.get(components[system].upper())
            if uri:
                coding["system"] = uri
            coding["code"] = components[code]
            if components[display]:
                coding["display"] = components[display]
            codings.append(coding)
    text = components[1] or components[4]
    if not codings and not text:
        return None
    concept: dict = {}
    if codings:
        concept["coding"] = codings
    if text:
        concept["text"] = text
    return concept


def _person_display(components: list[str]) -> str:
    """'Given Family' of an XCN (id^family^given^middle^suffix^prefix^degree...)."""
    components = [*components, "", "", "", "", "", "", ""]
    parts = [components[5], components[2], components[3], components[1], components[4]]
    return " ".join(p for p in parts if p)


# --- Patient -----------------------------------------------------------------------------------


@dataclass
class PatientData:
    """What a PID segment says about a patient: identifiers (PID-3) and demographic elements.

    `elements` maps a Patient element name to its new value; `removed` lists elements the message
    deletes (`""`). Elements the message says nothing about are in neither.
    """

    identifiers: list[dict]
    elements: dict = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)


def patient_identifiers(segment: Segment, number: int, version: str, *, required: bool = True) -> list[dict]:
    """FHIR identifiers of a CX list (PID-3, MRG-1): value, system from the assigning authority,
    type from the identifier type code."""
    identifiers: list[dict] = []
    for index, _ in enumerate(segment.repetitions(number), start=1):
        value = segment.value(number, 1, repetition=index)
        if not value or value == DELETE:
            continue
        system = identifier_system(
            segment.value(number, 4, 1, index),
            segment.value(number, 4, 2, index),
            segment.value(number, 4, 3, index),
            settings.BTT_HL7_PATIENT_ID_SYSTEM,
        )
        identifier: dict = {}
        # A FHIR code has no leading, trailing or repeated spaces; feeds pad fields.
        type_code = " ".join(segment.value(number, 5, repetition=index).split())
        if type_code:
            identifier["type"] = {"coding": [{"system": V2_0203, "code": type_code}]}
        identifier["system"] = system
        identifier["value"] = value
        if identifier not in identifiers:
            identifiers.append(identifier)
    if required and not identifiers:
        raise Hl7Error(
            f"{reference.field_description(segment.name, number, version)} holds no identifier: "
            "the patient cannot be identified",
            code="101",
            segment=segment.name,
            occurrence=segment.occurrence,
            field=number,
        )
    return identifiers


def human_names(segment: Segment, number: int) -> list[dict]:
    """HumanNames of an XPN list (family^given^middle^suffix^prefix^degree^type)."""
    names = []
    for index, _ in enumerate(segment.repetitions(number), start=1):
        comps = [*segment.components(number, index), "", "", "", "", "", "", ""]
        family = segment.value(number, 1, 1, index)  # FN: surname is the first subcomponent
        given = [n for n in (comps[1], *comps[2].split()) if n]
        name: dict = {}
        use = NAME_USES.get(comps[6].upper())
        if use:
            name["use"] = use
        text = " ".join(p for p in (comps[4], *given, family, comps[3]) if p)
        if text:
            name["text"] = text
        if family:
            name["family"] = family
        if given:
            name["given"] = given
        if comps[4]:
            name["prefix"] = [comps[4]]
        if comps[3]:
            name["suffix"] = [comps[3]]
        if family or given:
            names.append(name)
    return names


def addresses(segment: Segment, number: int) -> list[dict]:
    """Addresses of an XAD list (street^other^city^state^zip^country^type)."""
    result = []
    for index, _ in enumerate(segment.repetitions(number), start=1):
        comps = [*segment.components(number, index), "", "", "", "", "", "", ""]
        street = segment.value(number, 1, 1, index)  # SAD: street address is the first subcomponent
        address: dict = {}
        kind = comps[6].upper()
        if kind in ADDRESS_USES:
            address["use"] = ADDRESS_USES[kind]
        if kind == "M":
            address["type"] = "postal"
        lines = [line for line in (street, comps[1]) if line]
        if lines:
            address["line"] = lines
        for key, value in (
            ("city", comps[2]),
            ("state", comps[3]),
            ("postalCode", comps[4]),
            ("country", comps[5]),
        ):
            if value:
                address[key] = value
        if any(k in address for k in ("line", "city", "state", "postalCode", "country")):
            result.append(address)
    return result


def telecoms(segment: Segment, number: int, default_use: str) -> list[dict]:
    """ContactPoints of an XTN list (PID-13 home, PID-14 business)."""
    result = []
    for index, _ in enumerate(segment.repetitions(number), start=1):
        comps = [*segment.components(number, index), *[""] * 12]
        use_code, equipment = comps[1].upper(), comps[2].upper()
        if equipment in ("INTERNET", "X.400") or use_code == "NET":
            system, value = "email", comps[3] or comps[0]
        else:
            system = {"FX": "fax", "BP": "pager", "CP": "phone"}.get(equipment, "phone")
            if use_code == "BPN":
                system = "pager"
            value = comps[11] or _phone_number(comps) or comps[0]
        if not value:
            continue
        point = {"system": system, "value": value}
        use = {"PRN": "home", "ORN": "home", "VHN": "home", "WPN": "work"}.get(use_code, default_use)
        if equipment == "CP":
            use = "mobile"
        point["use"] = use
        result.append(point)
    return result


def _phone_number(comps: list[str]) -> str:
    country, area, local, extension = comps[4], comps[5], comps[6], comps[7]
    if not local:
        return ""
    number = " ".join(p for p in (f"+{country}" if country else "", f"({area})" if area else "", local) if p)
    return f"{number} ext. {extension}" if extension else number


def patient_data(pid: Segment, version: str) -> PatientData:
    """What the PID says: identifiers (required) and the demographics present in the message."""
    data = PatientData(identifiers=patient_identifiers(pid, 3, version))
    readers = (
        ("name", 5, lambda: human_names(pid, 5)),
        ("address", 11, lambda: addresses(pid, 11)),
    )
    for element, number, read in readers:
        _set(data, pid, element, number, read)
    if pid.raw(13) or pid.raw(14):
        raw13, raw14 = pid.raw(13).strip(), pid.raw(14).strip()
        if raw13 == DELETE and raw14 in ("", DELETE):
            data.removed.add("telecom")
        else:
            points = telecoms(pid, 13, "home") + telecoms(pid, 14, "work")
            if points:
                data.elements["telecom"] = points
    birth = pid.raw(7).strip()
    if birth == DELETE:
        data.removed.add("birthDate")
    elif birth:
        parsed = datetime_value(pid, 7, version)
        if parsed is not None:
            data.elements["birthDate"] = parsed.fhir_date()
    sex = pid.value(8).upper()
    if pid.raw(8).strip() == DELETE:
        data.removed.add("gender")
    elif sex:
        if sex not in GENDERS or (
            reference.table_values("HL70001") and sex not in reference.table_values("HL70001")
        ):
            raise Hl7Error(
                f"{reference.field_description('PID', 8, version)}: {sex!r} is not an administrative sex "
                f"of HL7 table 0001 ({', '.join(sorted(GENDERS))})",
                code="103",
                segment="PID",
                occurrence=pid.occurrence,
                field=8,
            )
        data.elements["gender"] = GENDERS[sex]
    death = datetime_value(pid, 29, version)
    indicator = pid.value(30).upper()
    if death is not None:
        data.elements["deceasedDateTime"] = death.fhir_datetime()
    elif indicator in ("Y", "N"):
        data.elements["deceasedBoolean"] = indicator == "Y"
    return data


def _set(data: PatientData, segment: Segment, element: str, number: int, read) -> None:
    raw = segment.raw(number).strip()
    if raw == DELETE:
        data.removed.add(element)
    elif raw:
        value = read()
        if value:
            data.elements[element] = value


def merge_patient(existing: dict | None, data: PatientData) -> dict:
    """The Patient after the message: `existing` (None: a new one) with the message's identifiers
    added and its elements set or removed; everything else (links, active, other identifiers)
    kept."""
    patient = dict(existing) if existing else {"resourceType": "Patient", "active": True}
    identifiers = list(patient.get("identifier") or [])
    known = {(i.get("system"), i.get("value")) for i in identifiers}
    for identifier in data.identifiers:
        if (identifier.get("system"), identifier["value"]) not in known:
            identifiers.append(identifier)
            known.add((identifier.get("system"), identifier["value"]))
    patient["identifier"] = identifiers
    for element in data.removed:
        patient.pop(element, None)
    for element, value in data.elements.items():
        if element.startswith("deceased"):
            patient.pop("deceasedDateTime", None)
            patient.pop("deceasedBoolean", None)
        patient[element] = value
    return patient


# --- ServiceRequest ------------------------------------------------------------------------------


@dataclass
class OrderData:
    """One order of an ORM^O01 / OMI^O23: its segments and what they say."""

    orc: Segment
    obr: Segment | None
    tq1: Segment | None
    ipcs: list[Segment]
    identifiers: list[dict]  # placer, filler, accession (typed PLAC, FILL, ACSN)
    accession: dict | None
    elements: dict


def order_groups(
    segments: list[Segment],
) -> list[tuple[Segment, Segment | None, Segment | None, list[Segment]]]:
    """(ORC, OBR, TQ1, IPCs) per order, in message order: each ORC starts an order; an OBR without
    its own ORC before it belongs to the ORC before."""
    groups: list[list] = []
    for segment in segments:
        if segment.name == "ORC":
            groups.append([segment, None, None, []])
        elif groups and segment.name == "OBR" and groups[-1][1] is None:
            groups[-1][1] = segment
        elif groups and segment.name == "TQ1" and groups[-1][2] is None:
            groups[-1][2] = segment
        elif groups and segment.name == "IPC":
            groups[-1][3].append(segment)
    return [tuple(group) for group in groups]  # type: ignore[misc]


def _order_number(segments: list[tuple[Segment | None, int]], code: str) -> dict | None:
    """An identifier from the first non-empty EI field among `segments` (ORC-2 before OBR-2...)."""
    for segment, number in segments:
        if segment is None:
            continue
        value = segment.value(number, 1)
        if value and value != DELETE:
            identifier: dict = {"type": {"coding": [{"system": V2_0203, "code": code}]}}
            default = settings.BTT_HL7_ACCESSION_SYSTEM if code == "ACSN" else None
            system = identifier_system(
                segment.value(number, 2), segment.value(number, 3), segment.value(number, 4), default
            )
            if system:
                identifier["system"] = system
            identifier["value"] = value
            return identifier
    return None


def order_data(
    orc: Segment, obr: Segment | None, tq1: Segment | None, ipcs: list[Segment], version: str
) -> OrderData:
    """The ServiceRequest content of one order (identifiers, status, code, priority, dates...)."""
    placer = _order_number([(orc, 2), (obr, 2)], "PLAC")
    filler = _order_number([(orc, 3), (obr, 3)], "FILL")
    # The accession number: IPC-1 (OMI), else OBR-18 (Placer Field 1, as IHE Scheduled Workflow has it).
    accession = _order_number([(ipcs[0] if ipcs else None, 1)], "ACSN")
    if accession is None and obr is not None and obr.value(18) and obr.value(18) != DELETE:
        accession = {"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]}}
        if settings.BTT_HL7_ACCESSION_SYSTEM:
            accession["system"] = settings.BTT_HL7_ACCESSION_SYSTEM
        accession["value"] = obr.value(18)
    identifiers = [i for i in (placer, filler, accession) if i]
    if placer is None and filler is None:
        raise Hl7Error(
            f"{reference.field_description('ORC', 2, version)} and ORC-3 / OBR-2 / OBR-3 are empty: "
            "an order needs a placer or filler order number",
            code="101",
            segment="ORC",
            occurrence=orc.occurrence,
            field=2,
        )
    control = orc.value(1).upper()
    if control not in ORDER_CONTROL_STATUS:
        raise Hl7Error(
            f"{reference.field_description('ORC', 1, version)}: order control {control or '(empty)'!r} "
            f"is not one this server applies ({', '.join(sorted(ORDER_CONTROL_STATUS))})",
            code="103" if control else "101",
            segment="ORC",
            occurrence=orc.occurrence,
            field=1,
        )
    status = ORDER_CONTROL_STATUS[control]
    if status is None:
        order_status = orc.value(5).upper()
        if order_status not in ORDER_STATUS:
            raise Hl7Error(
                f"{reference.field_description('ORC', 5, version)}: order status {order_status or '(empty)'!r} "
                f"is not one of {', '.join(sorted(ORDER_STATUS))} (ORC-1 is {control})",
                code="103" if order_status else "101",
                segment="ORC",
                occurrence=orc.occurrence,
                field=5,
            )
        status = ORDER_STATUS[order_status]
    elements: dict = {"status": status, "intent": "order"}
    code = codeable_concept(obr.components(4)) if obr is not None else None
    if code is None and ipcs:
        # OMI: the scheduled procedure step's protocol code (IPC-6) when OBR-4 is empty.
        code = codeable_concept(ipcs[0].components(6))
    if code is None:
        raise Hl7Error(
            f"{reference.field_description('OBR', 4, version)} is empty: the order needs a procedure code",
            code="101",
            segment="OBR" if obr is not None else "ORC",
            occurrence=obr.occurrence if obr is not None else orc.occurrence,
            field=4 if obr is not None else 0,
        )
    elements["code"] = code
    priority = (
        (tq1.value(9) if tq1 is not None else "") or orc.value(7, 6) or (obr.value(27, 6) if obr else "")
    )
    if priority:
        elements["priority"] = PRIORITIES.get(priority.upper(), "routine")
    occurrence = None
    if tq1 is not None:
        occurrence = datetime_value(tq1, 7, version)
    if occurrence is None and orc.value(7, 4):
        occurrence = datetime_value(orc, 7, version, component=4)
    if occurrence is None and obr is not None:
        occurrence = datetime_value(obr, 36, version) or datetime_value(obr, 7, version)
    if occurrence is not None:
        elements["occurrenceDateTime"] = occurrence.fhir_datetime()
    authored = datetime_value(orc, 9, version)
    if authored is not None:
        elements["authoredOn"] = authored.fhir_datetime()
    requester = _person_display(orc.components(12)) or (_person_display(obr.components(16)) if obr else "")
    if requester:
        elements["requester"] = {"display": requester}
    if obr is not None:
        reasons = [codeable_concept(obr.components(31, i)) for i in range(1, len(obr.repetitions(31)) + 1)]
        reasons = [r for r in reasons if r]
        if reasons:
            elements["reasonCode"] = reasons
        clinical = obr.value(13)
        if clinical and clinical != DELETE:
            elements["note"] = [{"text": clinical}]
    group = _order_number([(orc, 4)], "PGN")
    if group is not None:
        elements["requisition"] = group
    return OrderData(orc, obr, tq1, ipcs, identifiers, accession, elements)


def merge_service_request(existing: dict | None, order: OrderData, patient_id: str) -> dict:
    """The ServiceRequest after the message: `existing` (None: new) with the order's identifiers
    added and its elements set; subject the Patient."""
    request = dict(existing) if existing else {"resourceType": "ServiceRequest"}
    identifiers = list(request.get("identifier") or [])
    known = {(i.get("system"), i.get("value"), _type_code(i)) for i in identifiers}
    for identifier in order.identifiers:
        key = (identifier.get("system"), identifier["value"], _type_code(identifier))
        if key not in known:
            identifiers.append(identifier)
            known.add(key)
    request["identifier"] = identifiers
    request.update(order.elements)
    request["subject"] = {"reference": f"Patient/{patient_id}"}
    return request


def _type_code(identifier: dict) -> str:
    codings = (identifier.get("type") or {}).get("coding") or [{}]
    return codings[0].get("code", "")
