"""FHIR ImagingStudy upkeep: the DICOM index of a study, written to the FHIR store.

Each study in the index (`models.Study`) has one FHIR ImagingStudy, written through the FHIR
store's service functions (`integrations.fhir.store`), so it is validated, versioned and indexed
for search like any other resource. One function per operation, each atomic:

- `sync_imaging_study(study) -> str`: write the study's ImagingStudy as the index has it now;
  returns its logical id. `write_imaging_study` does the same and says what it did.
- `link_patient(dicom_patient, study) -> str`: the FHIR Patient a DICOM patient is, matched by
  identifier or created.
- `find_service_requests(study, patient_id) -> list[str]`: the orders the study fulfils.
- `build_imaging_study(...) -> dict`: the resource itself (reads the index, writes nothing).

How often it is written (the choice, see docs/architecture.md): not once per instance (a 300-slice
CT would make 300 versions) but from the Celery tasks in `tasks.py` while a study is received
(at most every `BTT_DICOM_IMAGING_STUDY_REFRESH_SECONDS`), and always when the study completes.
A write whose content equals the current version writes nothing, so re-running is free of new
versions. The DICOM index is the source of truth: edits made to the ImagingStudy over FHIR are
replaced by the next write.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import uuid
import zoneinfo
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import orjson
from django.conf import settings
from django.db import connection, transaction

from integrations.dicom.models import DicomPatient, Instance, Series, Study
from integrations.fhir import store
from integrations.fhir.outcomes import FhirError
from integrations.fhir.search import find_matches

logger = logging.getLogger(__name__)

DICOM_UID_SYSTEM = "urn:dicom:uid"
DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED_SYSTEM = "http://snomed.info/sct"
V2_0203_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0203"
RFC3986_SYSTEM = "urn:ietf:rfc:3986"
# Patients whose DICOM Patient ID is empty: one Patient per study, keyed by the Study Instance UID.
UNIDENTIFIED_PATIENT_SYSTEM = "urn:btt-health:dicom-unidentified-patient"

_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")

# Body Part Examined (0018,0015) defined terms -> SNOMED CT, after DICOM PS3.16 Annex L (CID 4031).
BODY_PART_SNOMED: dict[str, tuple[str, str]] = {
    "ABDOMEN": ("818981001", "Abdomen"),
    "ABDOMENPELVIS": ("818982008", "Abdomen and Pelvis"),
    "ANKLE": ("70258002", "Ankle joint"),
    "BRAIN": ("12738006", "Brain"),
    "BREAST": ("76752008", "Breast"),
    "CHEST": ("816094009", "Chest"),
    "CHESTABDOMEN": ("416550000", "Chest and Abdomen"),
    "CHESTABDPELVIS": ("416775004", "Chest, Abdomen and Pelvis"),
    "COCCYX": ("64688005", "Coccyx"),
    "COLON": ("71854001", "Colon"),
    "CSPINE": ("122494005", "Cervical spine"),
    "ELBOW": ("16953009", "Elbow joint"),
    "EXTREMITY": ("66019005", "Extremity"),
    "FOOT": ("56459004", "Foot"),
    "FOREARM": ("14975008", "Forearm"),
    "HAND": ("85562004", "Hand"),
    "HEAD": ("69536005", "Head"),
    "HEADNECK": ("774007", "Head and Neck"),
    "HEART": ("80891009", "Heart"),
    "HIP": ("29836001", "Hip"),
    "KIDNEY": ("64033007", "Kidney"),
    "KNEE": ("72696002", "Knee"),
    "LIVER": ("10200004", "Liver"),
    "LSPINE": ("122496007", "Lumbar spine"),
    "LUNG": ("39607008", "Lung"),
    "NECK": ("45048000", "Neck"),
    "PANCREAS": ("15776009", "Pancreas"),
    "PELVIS": ("816092008", "Pelvis"),
    "PROSTATE": ("41216001", "Prostate"),
    "SACRUM": ("54735007", "Sacrum"),
    "SHOULDER": ("16982005", "Shoulder"),
    "SKULL": ("89546000", "Skull"),
    "SPINE": ("421060004", "Spine"),
    "THORAX": ("816094009", "Thorax"),
    "TSPINE": ("122495006", "Thoracic spine"),
    "WHOLEBODY": ("38266002", "Entire body"),
    "WRIST": ("74670003", "Wrist joint"),
}

# Laterality (0020,0060) -> SNOMED CT, as FHIR's ImagingStudy.series.laterality example binding.
LATERALITY_SNOMED = {"L": ("7771000", "Left"), "R": ("24028007", "Right")}


@dataclass(frozen=True)
class ImagingStudySync:
    """What `write_imaging_study` did: the ids involved, the version now current, and whether
    a new version was written (False when the content was already current)."""

    imaging_study_id: str
    version_id: int
    written: bool
    patient_id: str
    service_request_ids: tuple[str, ...]


# --- the operations -------------------------------------------------------------------------------


def imaging_study_id(study_instance_uid: str) -> str:
    """The logical id of a study's ImagingStudy: a UUID derived from the Study Instance UID (an OID),
    the same on every node and every run, so writes are idempotent updates."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, study_instance_uid))


def sync_imaging_study(study: Study) -> str:
    """Bring the FHIR ImagingStudy of `study` up to date with the index; its logical id.

    See `write_imaging_study` for the contract.
    """
    return write_imaging_study(study).imaging_study_id


@transaction.atomic
def write_imaging_study(study: Study) -> ImagingStudySync:
    """Write the ImagingStudy of `study` (a Study row; re-read here) as the index has it now.

    Atomic; concurrent calls for one study are serialised (an advisory lock on PostgreSQL; SQLite
    serialises writers). Links the subject Patient (`link_patient`) and the orders
    (`find_service_requests`), builds the resource (`build_imaging_study`) and stores it with
    `store.update_resource` under `Study.fhir_imaging_study_id` (set to `imaging_study_id(uid)` on
    the first write, or to the id of an ImagingStudy that already carries the Study UID as
    identifier). Nothing is written when the content equals the current version. Raises FhirError
    when the store refuses the resource (a bug: the builder only emits valid content).
    """
    lock_study(study.study_instance_uid)
    study = Study.objects.select_related("patient").get(pk=study.pk)
    patient_id = link_patient(study.patient, study)
    service_request_ids = find_service_requests(study, patient_id)
    logical_id = (
        study.fhir_imaging_study_id
        or _existing_imaging_study_id(study)
        or imaging_study_id(study.study_instance_uid)
    )
    resource = build_imaging_study(
        study, logical_id=logical_id, patient_id=patient_id, service_request_ids=service_request_ids
    )
    current = _current(logical_id)
    if current is not None and _content(current.as_dict()) == _content(resource):
        sync = ImagingStudySync(logical_id, current.version_id, False, patient_id, tuple(service_request_ids))
    else:
        stored = store.update_resource("ImagingStudy", logical_id, resource).stored
        sync = ImagingStudySync(logical_id, stored.version_id, True, patient_id, tuple(service_request_ids))
        logger.info(
            "ImagingStudy/%s version %s for study %s", logical_id, stored.version_id, study.study_instance_uid
        )
    if study.fhir_imaging_study_id != logical_id:
        Study.objects.filter(pk=study.pk).update(fhir_imaging_study_id=logical_id)
        study.fhir_imaging_study_id = logical_id
    return sync


@transaction.atomic
def link_patient(dicom_patient: DicomPatient, study: Study) -> str:
    """The logical id of the FHIR Patient that `dicom_patient` is; created when there is none.

    - The Patient linked before (`DicomPatient.fhir_patient_id`) while it still exists;
    - else the Patient found by `Patient?identifier=<system>|<Patient ID>`, the system derived
      from the issuer (`patient_identifier_system`); the oldest one if several match;
    - else one created from the DICOM attributes (identifier, name, birth date, gender) with a
      conditional create on that identifier, so concurrent studies of a new patient make one.
    A DICOM patient without a Patient ID gets a Patient per study (identified by the Study UID),
    never shared. The link is stored in `DicomPatient.fhir_patient_id`.
    """
    if not dicom_patient.patient_id.strip():
        system, value = UNIDENTIFIED_PATIENT_SYSTEM, f"urn:oid:{study.study_instance_uid}"
    else:
        if dicom_patient.fhir_patient_id and _exists("Patient", dicom_patient.fhir_patient_id):
            return dicom_patient.fhir_patient_id
        system, value = patient_identifier_system(dicom_patient), dicom_patient.patient_id.strip()
    criteria = [("identifier", f"{system}|{_escape(value)}")]
    matches = list(find_matches("Patient", criteria).values_list("logical_id", flat=True)[:2])
    if len(matches) > 1:
        logger.warning(
            "several Patients have identifier %s|%s: linking the oldest, %s", system, value, matches[0]
        )
    if matches:
        patient_id = matches[0]
    else:
        resource = _patient_resource(dicom_patient, system, value)
        patient_id = store.create_resource(resource, if_none_exist=urlencode(criteria)).stored.logical_id
    if dicom_patient.patient_id.strip() and dicom_patient.fhir_patient_id != patient_id:
        DicomPatient.objects.filter(pk=dicom_patient.pk).update(fhir_patient_id=patient_id)
        dicom_patient.fhir_patient_id = patient_id
    return patient_id


def find_service_requests(study: Study, patient_id: str | None = None) -> list[str]:
    """Logical ids of the ServiceRequests whose identifier (else requisition) is the study's
    accession number; [] without an accession number or a match.

    With `BTT_DICOM_ACCESSION_SYSTEM` or an Issuer of Accession Number the search is
    `identifier=<system>|<accession>`, otherwise any system matches. When several match, those of
    the study's Patient (`patient_id`) are preferred, then those typed ACSN. Reads only.
    """
    accession = study.accession_number.strip()
    if not accession:
        return []
    system = accession_system(study)
    token = f"{system}|{_escape(accession)}" if system else _escape(accession)
    records = list(find_matches("ServiceRequest", [("identifier", token)])[:20])
    if not records:
        records = list(find_matches("ServiceRequest", [("requisition", token)])[:20])
    if len(records) <= 1:
        return [record.logical_id for record in records]
    resources = [(record.logical_id, orjson.loads(record.text)) for record in records]
    if patient_id:
        own = [
            (i, r)
            for i, r in resources
            if (r.get("subject") or {}).get("reference") == f"Patient/{patient_id}"
        ]
        resources = own or resources
    typed = [(i, r) for i, r in resources if _has_acsn_identifier(r, accession)]
    resources = typed or resources
    return sorted(logical_id for logical_id, _ in resources)


def build_imaging_study(
    study: Study, *, logical_id: str, patient_id: str, service_request_ids: list[str] | tuple[str, ...] = ()
) -> dict:
    """The ImagingStudy of `study` as the index has it now (reads Series and Instance rows).

    status `available`; identifiers: the Study Instance UID (`urn:dicom:uid`, `urn:oid:<uid>`) and
    the accession number (type v2-0203 ACSN); subject `Patient/<patient_id>`; basedOn the
    ServiceRequests; started from StudyDate/StudyTime (zone: Timezone Offset From UTC, else
    `BTT_DICOM_TIME_ZONE`); numberOfSeries/numberOfInstances counted from the index; modality (DCM);
    description; referrer (display); series ordered by number with uid, number, modality,
    description, bodySite (SNOMED CT where mapped, else the DICOM term as display), laterality,
    started, numberOfInstances and instances (uid, sopClass as `urn:oid:`, number).
    """
    series_rows = list(
        Series.objects.filter(study_id=study.pk)
        .order_by("series_number", "series_instance_uid")
        .values(
            "pk",
            "series_instance_uid",
            "series_number",
            "modality",
            "series_description",
            "body_part_examined",
            "tags",
        )
    )
    instances_by_series: dict[int, list[dict]] = {row["pk"]: [] for row in series_rows}
    for row in (
        Instance.objects.filter(series__study_id=study.pk)
        .order_by("instance_number", "sop_instance_uid")
        .values("series_id", "sop_instance_uid", "sop_class_uid", "instance_number")
        .iterator(chunk_size=2000)
    ):
        instances_by_series.setdefault(row["series_id"], []).append(row)

    resource: dict = {"resourceType": "ImagingStudy", "id": logical_id}
    identifiers = [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study.study_instance_uid}"}]
    accession = study.accession_number.strip()
    if accession:
        acsn: dict = {"type": {"coding": [{"system": V2_0203_SYSTEM, "code": "ACSN"}]}}
        system = accession_system(study)
        if system:
            acsn["system"] = system
        acsn["value"] = accession
        identifiers.append(acsn)
    resource["identifier"] = identifiers
    resource["status"] = "available"
    modalities = sorted({row["modality"].strip() for row in series_rows if row["modality"].strip()})
    if modalities:
        resource["modality"] = [{"system": DCM_SYSTEM, "code": code} for code in modalities]
    resource["subject"] = {"reference": f"Patient/{patient_id}"}
    started = dicom_datetime(study.study_date, study.study_time, _timezone_offset(study.tags))
    if started:
        resource["started"] = started
    if service_request_ids:
        resource["basedOn"] = [{"reference": f"ServiceRequest/{i}"} for i in service_request_ids]
    referrer = _person_name_text(study.referring_physician_name)
    if referrer:
        resource["referrer"] = {"display": referrer}
    resource["numberOfSeries"] = len(series_rows)
    resource["numberOfInstances"] = sum(len(rows) for rows in instances_by_series.values())
    if study.study_description.strip():
        resource["description"] = study.study_description.strip()
    series_list = []
    for row in series_rows:
        instances = instances_by_series.get(row["pk"], [])
        series: dict = {"uid": row["series_instance_uid"]}
        if row["series_number"] is not None and row["series_number"] >= 0:
            series["number"] = row["series_number"]
        series["modality"] = {"system": DCM_SYSTEM, "code": row["modality"].strip() or "OT"}
        if row["series_description"].strip():
            series["description"] = row["series_description"].strip()
        series["numberOfInstances"] = len(instances)
        body_site = body_site_coding(row["body_part_examined"])
        if body_site:
            series["bodySite"] = body_site
        laterality = LATERALITY_SNOMED.get(_tag_text(row["tags"], "00200060").upper())
        if laterality:
            series["laterality"] = {"system": SNOMED_SYSTEM, "code": laterality[0], "display": laterality[1]}
        series_started = dicom_datetime(
            _tag_text(row["tags"], "00080021"),
            _tag_text(row["tags"], "00080031"),
            _timezone_offset(study.tags),
        )
        if series_started:
            series["started"] = series_started
        if instances:
            series["instance"] = [_instance(instance) for instance in instances]
        series_list.append(series)
    if series_list:
        resource["series"] = series_list
    return resource


# --- helpers the operations share (public where other modules of the node use them) ----------------


def lock_study(study_instance_uid: str) -> None:
    """Serialise work on one study's FHIR side (ImagingStudy writes, event emission) until the
    transaction ends: a transaction-scoped advisory lock on PostgreSQL (it does not block the
    C-STORE path, which locks the Study row); nothing on SQLite, whose writers run one at a time."""
    if connection.vendor != "postgresql":
        return
    key = hashlib.blake2b(f"dicom-study:{study_instance_uid}".encode(), digest_size=8).digest()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [int.from_bytes(key, "big", signed=True)])


def patient_identifier_system(dicom_patient: DicomPatient) -> str:
    """The identifier system of a DICOM patient's Patient ID.

    From the Issuer of Patient ID Qualifiers Sequence's Universal Entity ID when its type is ISO
    (an OID) or URI; else from Issuer of Patient ID: an OID gives `urn:oid:<issuer>`, a URI is used
    as is, other text gives `urn:btt-health:issuer:<text>` (so two issuers' IDs never mix); no
    issuer gives `BTT_DICOM_PATIENT_ID_SYSTEM`.
    """
    qualifiers = _sequence_item(dicom_patient.tags, "00100024")
    system = _universal_entity_system(qualifiers, "00400032", "00400033")
    if system:
        return system
    return _issuer_system(dicom_patient.issuer, settings.BTT_DICOM_PATIENT_ID_SYSTEM)


def accession_system(study: Study) -> str | None:
    """The identifier system of the study's accession number: from the Issuer of Accession Number
    Sequence (Universal Entity ID, else Local Namespace Entity ID), else `BTT_DICOM_ACCESSION_SYSTEM`."""
    issuer = _sequence_item(study.tags, "00080051")
    system = _universal_entity_system(issuer, "00400032", "00400033")
    if system:
        return system
    local = _tag_text(issuer, "00400031")
    if local:
        return _issuer_system(local, None)
    return settings.BTT_DICOM_ACCESSION_SYSTEM


def body_site_coding(body_part: str) -> dict | None:
    """A Coding for Body Part Examined: SNOMED CT when the term is in `BODY_PART_SNOMED`, else the
    term itself as display (ImagingStudy.series.bodySite is a Coding in R4)."""
    term = (body_part or "").strip()
    if not term:
        return None
    mapped = BODY_PART_SNOMED.get(term.upper().replace(" ", ""))
    if mapped:
        return {"system": SNOMED_SYSTEM, "code": mapped[0], "display": mapped[1]}
    return {"display": term}


def dicom_datetime(date: str, time: str, offset: str = "") -> str | None:
    """A FHIR dateTime from a DICOM DA and TM (and Timezone Offset From UTC `&ZZXX`).

    Date only gives `YYYY-MM-DD`; with a time the zone is the offset, else `BTT_DICOM_TIME_ZONE`.
    Invalid values give None (or the date alone when only the time is invalid).
    """
    date = (date or "").strip()
    if not re.fullmatch(r"\d{8}", date):
        return None
    try:
        day = dt.date(int(date[:4]), int(date[4:6]), int(date[6:8]))
    except ValueError:
        return None
    match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?", (time or "").strip())
    if not match:
        return day.isoformat()
    hour, minute, second = int(match.group(1)), int(match.group(2) or 0), int(match.group(3) or 0)
    micro = int((match.group(4) or "0").ljust(6, "0"))
    if hour > 23 or minute > 59 or second > 59:
        return day.isoformat()
    zone: dt.tzinfo
    offset_match = re.fullmatch(r"([+-])(\d{2})(\d{2})", (offset or "").strip())
    if offset_match:
        sign = 1 if offset_match.group(1) == "+" else -1
        delta = dt.timedelta(hours=int(offset_match.group(2)), minutes=int(offset_match.group(3)))
        if delta > dt.timedelta(hours=14):
            return day.isoformat()
        zone = dt.timezone(sign * delta)
    else:
        zone = zoneinfo.ZoneInfo(settings.BTT_DICOM_TIME_ZONE)
    moment = dt.datetime.combine(day, dt.time(hour, minute, second, micro), tzinfo=zone)
    return moment.isoformat(timespec="milliseconds" if micro else "seconds")


def _instance(row: dict) -> dict:
    instance: dict = {
        "uid": row["sop_instance_uid"],
        "sopClass": {"system": RFC3986_SYSTEM, "code": f"urn:oid:{row['sop_class_uid']}"},
    }
    if row["instance_number"] is not None and row["instance_number"] >= 0:
        instance["number"] = row["instance_number"]
    return instance


def _patient_resource(dicom_patient: DicomPatient, system: str, value: str) -> dict:
    patient: dict = {"resourceType": "Patient", "identifier": [{"system": system, "value": value}]}
    name = _human_name(dicom_patient.patient_name)
    if name:
        patient["name"] = [name]
    patient["gender"] = {"M": "male", "F": "female", "O": "other"}.get(
        dicom_patient.sex.strip().upper(), "unknown"
    )
    birth = dicom_datetime(dicom_patient.birth_date, "")
    if birth:
        patient["birthDate"] = birth
    return patient


def _human_name(person_name: str) -> dict | None:
    """A HumanName from a DICOM PN (`Family^Given^Middle^Prefix^Suffix`, first component group)."""
    alphabetic = (person_name or "").split("=")[0]
    parts = [part.strip() for part in alphabetic.split("^")] + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    name: dict = {}
    if family:
        name["family"] = family
    given_names = [n for n in (*given.split(), *middle.split()) if n]
    if given_names:
        name["given"] = given_names
    if prefix:
        name["prefix"] = prefix.split()
    if suffix:
        name["suffix"] = suffix.split()
    if not name:
        return None
    name["text"] = " ".join([*name.get("prefix", []), *given_names, family, *name.get("suffix", [])]).strip()
    return name


def _person_name_text(person_name: str) -> str:
    name = _human_name(person_name)
    return name["text"] if name else ""


def _issuer_system(issuer: str, default: str | None) -> str | None:
    issuer = (issuer or "").strip()
    if not issuer:
        return default
    if _OID.match(issuer):
        return f"urn:oid:{issuer}"
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$", issuer):  # already a URI (urn:..., http://...)
        return issuer
    return f"urn:btt-health:issuer:{quote(issuer, safe='')}"


def _universal_entity_system(item: dict, id_tag: str, type_tag: str) -> str | None:
    universal = _tag_text(item, id_tag)
    kind = _tag_text(item, type_tag).upper()
    if universal and kind == "ISO" and _OID.match(universal):
        return f"urn:oid:{universal}"
    if universal and kind in ("URI", "URL") and ":" in universal:
        return universal
    return None


def _tag_text(tags: dict | None, tag: str) -> str:
    """The first value of `tag` in DICOM JSON, as stripped text ("" when absent)."""
    element = (tags or {}).get(tag) or {}
    values = element.get("Value") or []
    if not values:
        return ""
    value = values[0]
    if isinstance(value, dict):  # PN in DICOM JSON
        value = value.get("Alphabetic", "")
    return str(value).strip()


def _sequence_item(tags: dict | None, tag: str) -> dict:
    element = (tags or {}).get(tag) or {}
    values = element.get("Value") or []
    return values[0] if values and isinstance(values[0], dict) else {}


def _timezone_offset(tags: dict | None) -> str:
    return _tag_text(tags, "00080201")


def _escape(value: str) -> str:
    """A value escaped for a FHIR search token (`\\`, `,`, `|`, `$`)."""
    return re.sub(r"([\\,|$])", r"\\\1", value)


def _has_acsn_identifier(resource: dict, accession: str) -> bool:
    for identifier in resource.get("identifier") or []:
        codings = ((identifier.get("type") or {}).get("coding")) or []
        if identifier.get("value") == accession and any(
            c.get("system") == V2_0203_SYSTEM and c.get("code") == "ACSN" for c in codings
        ):
            return True
    return False


def _exists(resource_type: str, logical_id: str) -> bool:
    if not _FHIR_ID.match(logical_id):
        return False
    try:
        store.read_resource(resource_type, logical_id)
    except FhirError:
        return False
    return True


def _current(logical_id: str) -> store.StoredResource | None:
    try:
        return store.read_resource("ImagingStudy", logical_id)
    except FhirError:  # 404 unknown, 410 deleted: the next write (re)creates it
        return None


def _existing_imaging_study_id(study: Study) -> str | None:
    """The id of an ImagingStudy already carrying the Study UID (made by another system)."""
    criteria = [("identifier", f"{DICOM_UID_SYSTEM}|urn:oid:{study.study_instance_uid}")]
    return find_matches("ImagingStudy", criteria).values_list("logical_id", flat=True).first()


def _content(resource: dict) -> dict:
    """The resource without what the store sets (id, meta), for comparing versions."""
    return {key: value for key, value in resource.items() if key not in ("id", "meta")}
