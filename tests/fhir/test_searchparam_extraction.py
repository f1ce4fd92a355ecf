"""Unit tests for integrations.fhir.searchparams: definitions, FHIRPath subset and value extraction.

Plain unit tests: no database, no HTTP.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from integrations.fhir.search_values import (
    CompositeValue,
    DateValue,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
)
from integrations.fhir.searchparams import (
    SearchParamDef,
    UnsupportedExpression,
    compile_expression,
    evaluate,
    extract_param_values,
    extract_search_values,
    normalize_string,
    param_by_url,
    resource_types,
    search_params_for,
    unsupported_expressions,
)

FIXTURES = Path(__file__).parent / "fixtures"
SPEC = Path(__file__).resolve().parents[2] / "integrations" / "fhir" / "spec" / "search-parameters.json"
LOINC = "http://loinc.org"
SCT = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def dt(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def ref(rtype: str, rid: str, url: str | None = None) -> ReferenceValue:
    return ReferenceValue(rtype, rid, url if url is not None else f"{rtype}/{rid}")


def qty(
    value: str, low: str, high: str, system: str | None, code: str | None, unit: str | None
) -> QuantityValue:
    return QuantityValue(Decimal(value), Decimal(low), Decimal(high), system, code, unit)


# --------------------------------------------------------------------------------------------
# Definitions
# --------------------------------------------------------------------------------------------


def test_every_expression_in_the_spec_compiles() -> None:
    bundle = json.loads(SPEC.read_text())
    exprs = []
    for entry in bundle["entry"]:
        r = entry["resource"]
        if r.get("expression"):
            exprs.append((r["expression"], r["base"]))
        exprs.extend((c["expression"], None) for c in r.get("component", ()))
    assert len(exprs) > 1_400
    for expr, bases in exprs:
        compile_expression(expr)  # generic
        for base in bases or ():
            if base not in ("Resource", "DomainResource"):
                compile_expression(expr, base)  # specialised to each resource type
    assert unsupported_expressions() == {}


def test_unsupported_expression_raises() -> None:
    with pytest.raises(UnsupportedExpression):
        compile_expression("Patient.name.select(family)")
    with pytest.raises(UnsupportedExpression):
        compile_expression("Patient.name.family +")


def test_resource_types() -> None:
    types = resource_types()
    assert {"Patient", "Observation", "ImagingStudy", "Bundle", "Binary", "OperationOutcome"} <= types
    assert "Resource" not in types
    assert "DomainResource" not in types
    assert len(types) == 145


def test_search_params_for_patient_includes_resource_level_params() -> None:
    params = search_params_for("Patient")
    for code in ("_id", "_lastUpdated", "_tag", "_profile", "_security", "_source", "_text", "_content"):
        assert code in params
    assert params["_lastUpdated"].type == "date"
    assert params["_lastUpdated"].base == ("Resource",)
    assert params["family"] == SearchParamDef(
        code="family",
        url="http://hl7.org/fhir/SearchParameter/individual-family",
        type="string",
        base=("Patient", "Practitioner"),
        expression="Patient.name.family | Practitioner.name.family",
        id="individual-family",
        name="family",
    )
    gp = params["general-practitioner"]
    assert gp.type == "reference"
    assert set(gp.target) == {"Organization", "Practitioner", "PractitionerRole"}
    assert params["birthdate"].comparators == ("eq", "ne", "gt", "ge", "lt", "le", "sa", "eb", "ap")
    assert search_params_for("Patient") is params  # cached


def test_search_params_for_non_domain_resource_and_unknown_type() -> None:
    assert set(search_params_for("Binary")) == {
        "_id",
        "_lastUpdated",
        "_tag",
        "_profile",
        "_security",
        "_source",
        "_content",
        "_query",
    }
    assert "_text" in search_params_for("Observation")
    assert search_params_for("NoSuchResource") == {}


def test_composite_definitions_resolve_their_components() -> None:
    p = search_params_for("Observation")["code-value-quantity"]
    assert p.type == "composite"
    assert p.expression == "Observation"
    assert [(c.param.code, c.param.type, c.expression) for c in p.components] == [
        ("code", "token", "code"),
        ("value-quantity", "quantity", "value.as(Quantity)"),
    ]
    assert p.components[1].definition == "http://hl7.org/fhir/SearchParameter/Observation-value-quantity"
    assert param_by_url(p.components[1].definition) is p.components[1].param
    # The R4 erratum (definitions swapped) is corrected.
    rel = search_params_for("DocumentReference")["relationship"]
    assert [(c.expression, c.param.type) for c in rel.components] == [
        ("code", "token"),
        ("target", "reference"),
    ]


# --------------------------------------------------------------------------------------------
# FHIRPath evaluation
# --------------------------------------------------------------------------------------------


def test_fhirpath_paths_choice_types_and_functions() -> None:
    obs = load("observation-bp.json")
    assert evaluate("Observation.status", obs) == ["final"]
    assert evaluate("Patient.gender", obs) == []
    assert evaluate("Observation.effective", obs) == ["2024-02-01T07:45:00+01:00"]
    assert evaluate("Observation.effective.as(Period)", obs) == []
    assert evaluate("(Observation.effective as dateTime)", obs) == ["2024-02-01T07:45:00+01:00"]
    assert evaluate("Observation.component.value.ofType(Quantity).value", obs) == [107, 60.5]
    assert evaluate("Observation.component[1].code.coding.code", obs) == ["8462-4"]
    assert evaluate("Observation.component.code.coding.where(code='8480-6').display", obs) == [
        "Systolic blood pressure"
    ]
    assert evaluate("Observation.performer.where(resolve() is Practitioner).reference", obs) == [
        "Practitioner/prac-1"
    ]
    assert evaluate("Observation.performer.exists() and Observation.value.exists()", obs) == [False]
    assert evaluate("Observation.performer.exists() or Observation.value.exists()", obs) == [True]
    assert evaluate("Observation.component.first().code.text.empty()", obs) == [True]
    assert evaluate("Resource.meta.lastUpdated", obs) == ["2024-02-01T08:00:00Z"]
    assert evaluate("%resource.id", obs) == ["blood-pressure"]
    patient = load("patient-example.json")
    assert evaluate("Patient.birthDate | Patient.name.given.where($this = 'Jim')", patient) == [
        "1974-12-25",
        "Jim",
    ]
    assert evaluate("Patient.deceased.exists() and Patient.deceased != false", patient) == [False]


def test_fhirpath_extension_and_contained_resolve() -> None:
    res = {
        "resourceType": "Patient",
        "id": "x",
        "contained": [{"resourceType": "Organization", "id": "o1"}],
        "managingOrganization": {"reference": "#o1"},
        "extension": [
            {"url": "http://example.org/ext/a", "valueString": "A"},
            {"url": "http://example.org/ext/b", "valueCode": "B"},
        ],
    }
    assert evaluate("Patient.extension('http://example.org/ext/b').value", res) == ["B"]
    assert evaluate("Patient.extension.where(url='http://example.org/ext/a').value as string", res) == ["A"]
    assert evaluate("Patient.managingOrganization.where(resolve() is Organization).reference", res) == ["#o1"]


# --------------------------------------------------------------------------------------------
# Extraction: Patient
# --------------------------------------------------------------------------------------------


def test_patient_extraction() -> None:
    v = extract_search_values(load("patient-example.json"))
    assert "_id" not in v
    assert "_lastUpdated" not in v
    assert v["identifier"] == [
        TokenValue("urn:oid:1.2.36.146.595.217.0.1", "12345", "Medical record number"),
        TokenValue("http://hl7.org/fhir/sid/us-ssn", "444-22-2222"),
    ]
    assert v["active"] == [TokenValue(None, "true")]
    assert v["gender"] == [TokenValue(None, "male")]
    assert v["deceased"] == [TokenValue(None, "false")]
    assert v["language"] == [TokenValue("urn:ietf:bcp:47", "en-AU", "English (Australia)")]
    assert v["telecom"] == [
        TokenValue("phone", "(03) 5555 6473"),
        TokenValue("email", "peter.chalmers@example.org"),
    ]
    assert v["phone"] == [TokenValue("phone", "(03) 5555 6473")]
    assert v["email"] == [TokenValue("email", "peter.chalmers@example.org")]
    assert v["family"] == [StringValue("Chalmers")]
    assert v["given"] == [StringValue("Peter"), StringValue("James"), StringValue("Jim")]
    assert v["name"] == [
        StringValue("Chalmers"),
        StringValue("Peter"),
        StringValue("James"),
        StringValue("Mr."),
        StringValue("Jim"),
        StringValue("Jimmy Chémers"),
    ]
    assert v["phonetic"] == v["name"]
    assert v["address"] == [
        StringValue("534 Erewhon St"),
        StringValue("Unit 2"),
        StringValue("PleasantVille"),
        StringValue("Rainbow"),
        StringValue("Vic"),
        StringValue("3999"),
        StringValue("AU"),
        StringValue("534 Erewhon St PeasantVille, Rainbow, Vic  3999"),
    ]
    assert v["address-city"] == [StringValue("PleasantVille")]
    assert v["address-postalcode"] == [StringValue("3999")]
    assert v["address-use"] == [TokenValue(None, "home")]
    assert v["birthdate"] == [DateValue(dt(1974, 12, 25), dt(1974, 12, 26))]
    assert v["general-practitioner"] == [ref("Practitioner", "prac-1")]
    assert v["organization"] == [ref("Organization", "org-1")]
    assert v["link"] == [ref("Patient", "pat-2")]
    assert v["_tag"] == [TokenValue("http://btt.health/tags", "imported", "Imported from HL7 v2")]
    assert v["_security"] == [TokenValue("http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "N")]
    assert v["_profile"] == [
        UriValue("http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient|3.1.1")
    ]
    assert v["_source"] == [UriValue("http://btt.health/hl7v2#MSG0001")]
    assert "death-date" not in v


def test_patient_deceased_datetime_and_contained_reference() -> None:
    v = extract_search_values(
        {
            "resourceType": "Patient",
            "id": "p2",
            "deceasedDateTime": "2015-02-14T13:42:00+10:00",
            "contained": [{"resourceType": "Organization", "id": "o1"}],
            "managingOrganization": {"reference": "#o1"},
            "generalPractitioner": [
                {"reference": "#o1", "identifier": {"system": "urn:npi", "value": "99"}},
                {"identifier": {"value": "only-value"}},
                {"display": "no reference, no identifier"},
            ],
        }
    )
    assert v["deceased"] == [TokenValue(None, "true")]
    assert v["death-date"] == [DateValue(dt(2015, 2, 14, 3, 42), dt(2015, 2, 14, 3, 42, 1))]
    assert "organization" not in v  # contained references are not indexed
    assert v["general-practitioner"] == [
        ReferenceValue(None, None, None, "urn:npi", "99"),
        ReferenceValue(None, None, None, None, "only-value"),
    ]


# --------------------------------------------------------------------------------------------
# Extraction: Observation
# --------------------------------------------------------------------------------------------

SYSTOLIC = TokenValue(LOINC, "8480-6", "Systolic blood pressure")
DIASTOLIC = TokenValue(LOINC, "8462-4", "Diastolic blood pressure")
SYS_QTY = qty("107", "106.5", "107.5", UCUM, "mm[Hg]", "mmHg")
DIA_QTY = qty("60.5", "60.45", "60.55", UCUM, "mm[Hg]", "mmHg")


def test_observation_blood_pressure_extraction() -> None:
    v = extract_search_values(load("observation-bp.json"))
    panel = TokenValue(LOINC, "85354-9", "Blood pressure panel with all children optional")
    cc_text = TokenValue(None, None, "Blood pressure systolic & diastolic")
    assert v["code"] == [panel, cc_text]
    assert v["status"] == [TokenValue(None, "final")]
    assert v["category"] == [
        TokenValue("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs", "Vital Signs")
    ]
    # 07:45+01:00 is 06:45Z; second precision.
    assert v["date"] == [DateValue(dt(2024, 2, 1, 6, 45), dt(2024, 2, 1, 6, 45, 1))]
    assert v["subject"] == [ref("Patient", "pat-1")]
    assert v["patient"] == [ref("Patient", "pat-1")]
    assert v["encounter"] == [ref("Encounter", "enc-1")]
    assert v["based-on"] == [ReferenceValue(None, None, None, "https://acme.org/identifiers", "1234")]
    assert v["performer"] == [
        ref("Practitioner", "prac-1"),
        ReferenceValue(None, None, "urn:uuid:a3b5c7d9-0000-4000-8000-000000000001"),
    ]
    assert v["identifier"] == [
        TokenValue("urn:ietf:rfc:3986", "urn:uuid:187e0c12-8dd2-67e2-99b2-bf273c878281")
    ]
    assert v["_profile"] == [UriValue("http://hl7.org/fhir/StructureDefinition/vitalsigns")]
    assert v["component-code"] == [SYSTOLIC, DIASTOLIC]
    assert v["combo-code"] == [panel, cc_text, SYSTOLIC, DIASTOLIC]
    assert v["component-value-quantity"] == [SYS_QTY, DIA_QTY]
    assert v["combo-value-quantity"] == [SYS_QTY, DIA_QTY]
    assert v["component-code-value-quantity"] == [
        CompositeValue(((SYSTOLIC,), (SYS_QTY,))),
        CompositeValue(((DIASTOLIC,), (DIA_QTY,))),
    ]
    # The panel itself has no value, so only the components make combo composites.
    assert v["combo-code-value-quantity"] == v["component-code-value-quantity"]
    for absent in ("value-quantity", "code-value-quantity", "value-concept", "value-date", "value-string"):
        assert absent not in v
    # Observation.issued is not a search parameter of Observation in R4.
    assert "issued" not in v


def test_observation_glucose_extraction() -> None:
    v = extract_search_values(load("observation-glucose.json"))
    glucose = TokenValue(LOINC, "15074-8", "Glucose [Moles/volume] in Blood")
    value = qty("6.3", "6.25", "6.35", UCUM, "mmol/L", "mmol/l")
    assert v["code"] == [glucose]
    assert v["value-quantity"] == [value]
    assert v["combo-value-quantity"] == [value]
    assert v["code-value-quantity"] == [CompositeValue(((glucose,), (value,)))]
    assert v["combo-code-value-quantity"] == [CompositeValue(((glucose,), (value,)))]
    # Period with no end: unbounded high; 09:30:10+01:00 -> 08:30:10Z.
    assert v["date"] == [DateValue(dt(2013, 4, 2, 8, 30, 10), None)]
    # An absolute reference with a version: type/id from the URL, the literal kept.
    abs_ref = ref("Patient", "pat-1", "https://fhir.example.org/r4/Patient/pat-1/_history/3")
    assert v["subject"] == [abs_ref]
    assert v["patient"] == [abs_ref]
    assert v["focus"] == [ref("Group", "grp-1")]
    assert v["derived-from"] == [ref("Observation", "bp-1")]
    assert v["device"] == [ref("DeviceMetric", "example")]
    assert "has-member" not in v  # only a contained reference


def test_observation_value_choice_types() -> None:
    base = {"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "Note"}}
    v = extract_search_values({**base, "valueString": "Positive"})
    assert v["value-string"] == [StringValue("Positive")]
    assert v["code-value-string"] == [
        CompositeValue(((TokenValue(None, None, "Note"),), (StringValue("Positive"),)))
    ]
    v = extract_search_values(
        {**base, "valueCodeableConcept": {"coding": [{"system": SCT, "code": "10828004"}], "text": "Pos"}}
    )
    assert v["value-concept"] == [TokenValue(SCT, "10828004"), TokenValue(None, None, "Pos")]
    assert v["value-string"] == [StringValue("Pos")]  # (value as CodeableConcept).text
    v = extract_search_values({**base, "valuePeriod": {"start": "2020-01", "end": "2020-02-15"}})
    assert v["value-date"] == [DateValue(dt(2020, 1, 1), dt(2020, 2, 16))]
    v = extract_search_values({**base, "valueDateTime": "2020"})
    assert v["value-date"] == [DateValue(dt(2020, 1, 1), dt(2021, 1, 1))]
    assert v["code-value-date"] == [
        CompositeValue(((TokenValue(None, None, "Note"),), (DateValue(dt(2020, 1, 1), dt(2021, 1, 1)),)))
    ]
    v = extract_search_values(
        {**base, "valueSampledData": {"origin": {"value": 0}, "period": 10, "dimensions": 1}}
    )
    assert "value-quantity" not in v


def test_where_resolve_is_patient_filters_references() -> None:
    obs = {"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"}}
    v = extract_search_values({**obs, "subject": {"reference": "Group/g1"}})
    assert v["subject"] == [ref("Group", "g1")]
    assert "patient" not in v
    v = extract_search_values({**obs, "subject": {"identifier": {"system": "urn:mrn", "value": "1"}}})
    assert v["subject"] == [ReferenceValue(None, None, None, "urn:mrn", "1")]
    assert "patient" not in v  # resolve() cannot tell the type of an identifier-only reference
    report = extract_search_values(load("diagnosticreport-cbc.json"))
    assert report["subject"] == [ref("Group", "grp-1")]
    assert "patient" not in report


# --------------------------------------------------------------------------------------------
# Extraction: other resources
# --------------------------------------------------------------------------------------------


def test_encounter_extraction() -> None:
    v = extract_search_values(load("encounter-inpatient.json"))
    # Period start at second precision .. end of the end day (exclusive).
    assert v["date"] == [DateValue(dt(2020, 3, 4, 11), dt(2020, 3, 14))]
    assert v["location-period"] == [DateValue(dt(2020, 3, 1), None)]
    assert v["class"] == [
        TokenValue("http://terminology.hl7.org/CodeSystem/v3-ActCode", "IMP", "inpatient encounter")
    ]
    assert v["type"] == [TokenValue(SCT, "183807002", "Inpatient stay for nine days")]
    assert v["reason-code"] == [TokenValue(None, None, "Heart failure")]
    assert v["length"] == [qty("9", "8.5", "9.5", UCUM, "d", "days")]
    assert v["participant"] == [ref("Practitioner", "prac-1"), ref("RelatedPerson", "rp-1")]
    assert v["practitioner"] == [ref("Practitioner", "prac-1")]
    assert v["participant-type"] == [
        TokenValue("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "PART")
    ]
    assert v["patient"] == [ref("Patient", "pat-1")]
    assert v["location"] == [ref("Location", "ward-3")]
    assert v["service-provider"] == [ref("Organization", "org-1")]
    assert v["identifier"] == [TokenValue("http://btt.health/visit", "V-2020-0001")]


def test_medication_request_extraction() -> None:
    v = extract_search_values(load("medicationrequest-example.json"))
    name = "Nizatidine 15 MG/ML Oral Solution [Axid]"
    assert v["code"] == [
        TokenValue("http://www.nlm.nih.gov/research/umls/rxnorm", "582620", name),
        TokenValue(None, None, name),
    ]
    assert "medication" not in v  # (MedicationRequest.medication as Reference)
    assert v["authoredon"] == [DateValue(dt(2015, 1, 15), dt(2015, 1, 16))]
    # dosageInstruction.timing.event
    assert v["date"] == [DateValue(dt(2015, 1, 16, 8), dt(2015, 1, 16, 8, 0, 1))]
    assert v["intent"] == [TokenValue(None, "order")]
    assert v["priority"] == [TokenValue(None, "routine")]
    assert v["intended-performertype"] == [TokenValue(None, None, "Pharmacist")]
    assert v["intended-dispenser"] == [ref("Organization", "pharm-1")]
    assert v["requester"] == [ref("Practitioner", "prac-1")]
    assert v["patient"] == [ref("Patient", "pat-1")]
    med_ref = extract_search_values(
        {
            "resourceType": "MedicationRequest",
            "id": "m",
            "medicationReference": {"reference": "Medication/med-7"},
        }
    )
    assert med_ref["medication"] == [ref("Medication", "med-7")]
    assert "code" not in med_ref


def test_diagnostic_report_extraction() -> None:
    v = extract_search_values(load("diagnosticreport-cbc.json"))
    assert v["code"] == [
        TokenValue(LOINC, "58410-2", "CBC panel - Blood by Automated count"),
        TokenValue(None, None, "Complete Blood Count"),
    ]
    assert v["date"] == [DateValue(dt(2011, 3, 3, 21, 30), dt(2011, 3, 3, 21, 30, 1))]
    assert v["issued"] == [DateValue(dt(2011, 3, 4, 0, 45, 33), dt(2011, 3, 4, 0, 45, 34))]
    assert v["result"] == [ref("Observation", "r1"), ref("Observation", "r2")]
    assert v["media"] == [ref("Media", "img-1")]
    assert v["conclusion"] == [TokenValue(SCT, "428763004", "Normal")]
    assert v["based-on"] == [ref("ServiceRequest", "req-1")]
    assert v["performer"] == [ref("Organization", "lab-1")]
    assert v["category"] == [TokenValue("http://terminology.hl7.org/CodeSystem/v2-0074", "HM")]


def test_imaging_study_extraction() -> None:
    v = extract_search_values(load("imagingstudy-ct.json"))
    dcm = "http://dicom.nema.org/resources/ontology/DCM"
    assert v["identifier"] == [
        TokenValue("urn:dicom:uid", "urn:oid:2.16.124.113543.6003.1154777499.30246.19789.3503430045"),
        TokenValue("http://btt.health/accession", "ACC-7"),
    ]
    assert v["modality"] == [TokenValue(dcm, "CT")]  # series.modality (Coding), de-duplicated
    assert v["series"] == [TokenValue(None, "2.16.124.113543.6003.2588828330.45298.17418.2723805630")]
    assert v["instance"] == [TokenValue(None, "2.16.124.113543.6003.189642796.63084.16748.2599092903")]
    assert v["dicom-class"] == [TokenValue("urn:ietf:rfc:3986", "urn:oid:1.2.840.10008.5.1.4.1.1.2")]
    assert v["bodysite"] == [TokenValue(SCT, "67734004", "Upper Trunk Structure")]
    assert v["started"] == [DateValue(dt(2011, 1, 1, 8, 1, 20), dt(2011, 1, 1, 8, 1, 21))]
    assert v["performer"] == [ref("Practitioner", "rad-1")]
    assert v["endpoint"] == [ref("Endpoint", "pacs")]
    assert v["basedon"] == [ref("ServiceRequest", "req-1")]
    assert v["patient"] == [ref("Patient", "pat-1")]
    assert v["reason"] == [TokenValue(SCT, "429858000", "Computed tomography (CT) of head and neck")]


def test_service_request_extraction() -> None:
    v = extract_search_values(load("servicerequest-imaging.json"))
    # occurrenceTiming: repeat.boundsPeriod
    assert v["occurrence"] == [DateValue(dt(2024, 3, 1, 9), dt(2024, 3, 1, 10, 0, 1))]
    assert v["authored"] == [DateValue(dt(2024, 2, 28, 21, 20), dt(2024, 2, 28, 21, 20, 1))]
    assert v["identifier"] == [TokenValue("urn:oid:1.3.4.5.6.7", "2345234234234", "Placer order number")]
    assert v["requisition"] == [TokenValue("http://btt.health/requisition", "REQ-99")]
    assert v["instantiates-uri"] == [UriValue("http://btt.health/protocols/ct-head")]
    assert v["order-detail"] == [TokenValue(None, "with contrast")]
    assert v["performer-type"] == [TokenValue(SCT, "66862007", "Radiologist")]
    assert v["code"] == [TokenValue(LOINC, "24727-0", "CT Head W contrast IV")]
    assert v["specimen"] == [ref("Specimen", "sp-1")]
    assert v["priority"] == [TokenValue(None, "urgent")]


def test_questionnaire_use_context_composites() -> None:
    v = extract_search_values(load("questionnaire-phq9.json"))
    ctx_type = "http://terminology.hl7.org/CodeSystem/usage-context-type"
    focus, age = TokenValue(ctx_type, "focus"), TokenValue(ctx_type, "age")
    depressive = TokenValue(SCT, "35489007", "Depressive disorder")
    age_range = qty("18", "17.5", "65.05", UCUM, "a", "a")  # low 18 (precision 1) .. high 65.0 (0.1)
    age_12 = qty("12", "11.5", "12.5", UCUM, "a", "a")  # the >= comparator is ignored
    assert v["context-type"] == [focus, age]
    assert v["context"] == [depressive]
    assert v["context-quantity"] == [age_12, age_range]  # `as Quantity` branch, then `as Range`
    assert v["context-type-value"] == [CompositeValue(((focus,), (depressive,)))]
    assert v["context-type-quantity"] == [
        CompositeValue(((age,), (age_range,))),
        CompositeValue(((age,), (age_12,))),
    ]
    assert v["url"] == [UriValue("http://btt.health/Questionnaire/phq-9")]
    assert v["version"] == [TokenValue(None, "2.0")]
    assert v["date"] == [DateValue(dt(2023, 6, 1), dt(2023, 7, 1))]
    assert v["effective"] == [DateValue(dt(2023, 7, 1), dt(2026, 1, 1))]
    assert v["title"] == [StringValue("Patient Health Questionnaire (PHQ-9)")]
    assert v["subject-type"] == [TokenValue(None, "Patient")]
    assert v["code"] == [TokenValue(LOINC, "44250-9")]  # Questionnaire.item.code
    assert v["definition"] == [UriValue("http://loinc.org/fhir/DataElement/44250-9")]


def test_number_money_range_and_canonical_references() -> None:
    v = extract_search_values(
        {
            "resourceType": "RiskAssessment",
            "id": "r",
            "prediction": [
                {"probabilityDecimal": 0.02},
                {"probabilityRange": {"low": {"value": 1}, "high": {"value": 5}}},
                {"probabilityRange": {"high": {"value": 7.5}}},
            ],
        }
    )
    assert v["probability"] == [
        NumberValue(Decimal("0.02"), Decimal("0.015"), Decimal("0.025")),
        NumberValue(Decimal("1"), Decimal("0.5"), Decimal("5.5")),
        NumberValue(Decimal("7.5"), Decimal("-Infinity"), Decimal("7.55")),  # no low: unbounded
    ]
    v = extract_search_values(
        {
            "resourceType": "ChargeItem",
            "id": "c",
            "priceOverride": {"value": 40.5, "currency": "EUR"},
            "factorOverride": 100,
        }
    )
    assert v["price-override"] == [qty("40.5", "40.45", "40.55", "urn:iso:std:iso:4217", "EUR", None)]
    assert v["factor-override"] == [NumberValue(Decimal("100"), Decimal("99.5"), Decimal("100.5"))]
    v = extract_search_values(
        {
            "resourceType": "PlanDefinition",
            "id": "pd",
            "library": ["http://example.org/Library/lib|1.2"],
            "relatedArtifact": [
                {"type": "derived-from", "resource": "http://example.org/PlanDefinition/base"},
                {"type": "depends-on", "resource": "http://example.org/Library/dep"},
            ],
        }
    )
    assert v["depends-on"] == [
        ReferenceValue(None, None, "http://example.org/Library/dep"),
        ReferenceValue(None, None, "http://example.org/Library/lib"),
    ]
    assert v["derived-from"] == [ReferenceValue(None, None, "http://example.org/PlanDefinition/base")]


def test_molecular_sequence_composite_uses_percent_resource() -> None:
    v = extract_search_values(
        {
            "resourceType": "MolecularSequence",
            "id": "m",
            "referenceSeq": {"chromosome": {"coding": [{"code": "1"}]}, "windowStart": 10, "windowEnd": 20},
            "variant": [{"start": 12, "end": 13}],
        }
    )
    n = lambda x: NumberValue(Decimal(x), Decimal(x) - Decimal("0.5"), Decimal(x) + Decimal("0.5"))  # noqa: E731
    chrom = TokenValue(None, "1")
    assert v["chromosome-variant-coordinate"] == [CompositeValue(((chrom,), (n(12),), (n(13),)))]
    assert v["chromosome-window-coordinate"] == [CompositeValue(((chrom,), (n(10),), (n(20),)))]
    assert "referenceseqid-variant-coordinate" not in v  # a component without value


def test_group_characteristic_value_composite_with_boolean() -> None:
    v = extract_search_values(
        {
            "resourceType": "Group",
            "id": "g",
            "type": "person",
            "actual": True,
            "characteristic": [
                {"code": {"coding": [{"code": "smoker"}]}, "valueBoolean": True, "exclude": False},
            ],
        }
    )
    assert v["value"] == [TokenValue(None, "true")]
    assert v["characteristic-value"] == [
        CompositeValue(((TokenValue(None, "smoker"),), (TokenValue(None, "true"),)))
    ]
    assert v["exclude"] == [TokenValue(None, "false")]


def test_document_reference_relationship_and_bundle() -> None:
    v = extract_search_values(
        {
            "resourceType": "DocumentReference",
            "id": "d",
            "relatesTo": [{"code": "replaces", "target": {"reference": "DocumentReference/old"}}],
            "content": [{"attachment": {"url": "http://x/doc.pdf", "contentType": "application/pdf"}}],
        }
    )
    assert v["relationship"] == [
        CompositeValue(((TokenValue(None, "replaces"),), (ref("DocumentReference", "old"),)))
    ]
    assert v["location"] == [UriValue("http://x/doc.pdf")]
    bundle = extract_search_values(
        {
            "resourceType": "Bundle",
            "id": "b",
            "type": "document",
            "timestamp": "2020-01-01T00:00:00.1234567Z",
            "entry": [{"resource": {"resourceType": "Composition", "id": "comp"}}],
        }
    )
    assert "composition" not in bundle  # inlined resources are not indexed as references
    assert bundle["timestamp"] == [
        DateValue(dt(2020, 1, 1, 0, 0, 0, 123456), dt(2020, 1, 1, 0, 0, 0, 123457))
    ]


def test_extract_param_values_and_unknown_types() -> None:
    patient = load("patient-example.json")
    assert extract_param_values(search_params_for("Patient")["_id"], patient) == [TokenValue(None, "pat-1")]
    assert extract_param_values(search_params_for("Patient")["_lastUpdated"], patient) == [
        DateValue(dt(2024, 1, 15, 10, 30), dt(2024, 1, 15, 10, 30, 1))
    ]
    assert extract_search_values({"resourceType": "NoSuchType", "id": "x"}) == {}
    assert extract_search_values({"id": "x"}) == {}


# --------------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [
        ("2020", dt(2020, 1, 1), dt(2021, 1, 1)),
        ("2020-12", dt(2020, 12, 1), dt(2021, 1, 1)),
        ("2020-02", dt(2020, 2, 1), dt(2020, 3, 1)),
        ("2020-02-29", dt(2020, 2, 29), dt(2020, 3, 1)),
        ("2020-02-29T23:59", dt(2020, 2, 29, 23, 59), dt(2020, 3, 1)),  # minutes, no zone: UTC
        ("2020-02-29T10:00:00", dt(2020, 2, 29, 10), dt(2020, 2, 29, 10, 0, 1)),
        ("2020-02-29T10:00:00.5Z", dt(2020, 2, 29, 10, 0, 0, 500000), dt(2020, 2, 29, 10, 0, 0, 600000)),
        (
            "2020-02-29T10:00:00.123-03:30",
            dt(2020, 2, 29, 13, 30, 0, 123000),
            dt(2020, 2, 29, 13, 30, 0, 124000),
        ),
        ("9999", dt(9999, 1, 1), None),
    ],
)
def test_date_precision_ranges(value: str, low: datetime, high: datetime | None) -> None:
    v = extract_search_values({"resourceType": "Patient", "id": "p", "birthDate": value})
    assert v["birthdate"] == [DateValue(low, high)]


@pytest.mark.parametrize("value", ["2020-13", "2020-02-30", "20200101", "not a date", ""])
def test_invalid_dates_are_skipped(value: str) -> None:
    assert "birthdate" not in extract_search_values(
        {"resourceType": "Patient", "id": "p", "birthDate": value}
    )


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [
        (100, "99.5", "100.5"),
        (5.4, "5.35", "5.45"),
        (Decimal("5.40"), "5.395", "5.405"),
        (0.001, "0.0005", "0.0015"),
        (-2, "-2.5", "-1.5"),
    ],
)
def test_quantity_precision_ranges(value: Any, low: str, high: str) -> None:
    enc = {
        "resourceType": "Encounter",
        "id": "e",
        "status": "finished",
        "length": {"value": value, "code": "min"},
    }
    (q,) = extract_search_values(enc)["length"]
    assert (q.low, q.high, q.code, q.system) == (Decimal(low), Decimal(high), "min", None)
    assert q.value == Decimal(str(value))


def test_reference_forms() -> None:
    refs = [
        {"reference": "Patient/123"},
        {"reference": "Patient/123/_history/4"},
        {"reference": "http://other.org/fhir/Patient/abc"},
        {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"},
        {"reference": "urn:oid:1.2.3"},
        {"reference": "Patient?identifier=urn:mrn|7"},
        {"reference": "NotAType/1"},
        {"reference": "Patient/123"},  # duplicate, removed
    ]
    v = extract_search_values({"resourceType": "Patient", "id": "p", "generalPractitioner": refs})
    assert v["general-practitioner"] == [
        ref("Patient", "123"),
        ref("Patient", "123", "Patient/123/_history/4"),
        ref("Patient", "abc", "http://other.org/fhir/Patient/abc"),
        ReferenceValue(None, None, "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"),
        ReferenceValue(None, None, "urn:oid:1.2.3"),
        ReferenceValue(None, None, "Patient?identifier=urn:mrn|7"),
        ReferenceValue(None, None, "NotAType/1"),
    ]


def test_token_forms() -> None:
    v = extract_search_values(
        {
            "resourceType": "Patient",
            "id": "p",
            "identifier": [
                {"system": "urn:sys-only"},
                {"value": "no-system"},
                {"type": {"text": "Passport"}, "value": "X1"},
                {"use": "official"},
            ],
            "communication": [{"language": {"text": "Klingon"}}],
            "telecom": [{"system": "url", "value": "https://example.org"}, {"system": "phone"}],
        }
    )
    assert v["identifier"] == [
        TokenValue("urn:sys-only", None),
        TokenValue(None, "no-system"),
        TokenValue(None, "X1", "Passport"),
    ]
    assert v["language"] == [TokenValue(None, None, "Klingon")]
    assert v["telecom"] == [TokenValue("url", "https://example.org")]


def test_normalize_string() -> None:
    assert normalize_string("  Jimmy   Chémers ") == "jimmy chemers"
    assert normalize_string("STRASSE") == normalize_string("Straße")
    assert normalize_string("Ångström\tÉcole") == "angstrom ecole"
    assert normalize_string("ﬁle") == "file"  # NFKD compatibility
    assert normalize_string("plain ascii") == "plain ascii"


def test_extraction_is_fast() -> None:
    resources = [load("observation-bp.json"), load("observation-glucose.json"), load("patient-example.json")]
    for r in resources:
        extract_search_values(r)  # compile
    n = 200
    start = time.perf_counter()
    for _ in range(n):
        for r in resources:
            extract_search_values(r)
    per_resource = (time.perf_counter() - start) / (n * len(resources))
    assert per_resource < 0.002  # typically ~0.05 ms; generous for slow CI machines
