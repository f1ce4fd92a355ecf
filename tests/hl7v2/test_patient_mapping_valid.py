"""The Patients the HL7 v2 mapping builds are valid FHIR R4 (`integrations/hl7v2/mapping.py`).

The store does not validate them again (`store.create_resource(checked=True)`), so the mapping
must never build one that `validation.validate_resource` would refuse: checked here over every PID
of the sample files and over PIDs with what real feeds send (padded codes, escapes, every kind of
identifier authority, partial dates, time zones, deletions), alone and merged onto a stored
Patient with more in it.
"""

from __future__ import annotations

import re

import pytest

from integrations.fhir.validation import validate_resource
from integrations.hl7v2 import er7, mapping
from tests.hl7v2.conftest import FIXTURES

HEADER = "MSH|^~\\&|EHR|HOSP|BTT|RAD|20240301||ADT^A08|MAP-1|P|{version}"

PIDS = [
    # Padded and spaced identifier type codes; repeated identifiers; no authority at all.
    "PID|1||A1^^^HOSP^ MR ~A2^^^HOSP^M  R~A3^^^^MR~A4||Doe^Jane",
    # Every kind of assigning authority: OID, URI, namespace text with spaces and symbols.
    "PID|1||B1^^^&1.2.840.113619.6.197&ISO^MR~B2^^^&http://example.org/ids&URI~B3^^^St. Mary's / East^PI"
    "||Roe^Richard^J^III^Dr^PhD^L",
    # Escapes in names and addresses, address types, telecom kinds.
    "PID|1||C1^^^HOSP^MR||O'Brien\\S\\Smythe^Mary\\T\\Ann^^^Mrs~Smith^Molly^^^^^M||19900102|F|||"
    "12 Pipe\\F\\Bar Lane^Apt 4^Dublin^^D02^IRL^M~1 Main^^Springfield^IL^62701^USA^H||"
    "(01)555-0101~^NET^Internet^mary@example.org~^PRN^CP^^1^555^1234567^89|^WPN^FX^^^555^7654321",
    # Partial birth dates; death date with and without a zone; death indicator alone.
    "PID|1||D1^^^HOSP^MR||Year^Only||1950|U|||||||||||||||||||||20240301101500+0200|Y",
    "PID|1||D2^^^HOSP^MR||Month^Only||195007|O|||||||||||||||||||||202403011015|Y",
    "PID|1||D3^^^HOSP^MR||Minute^Death||19500704|A|||||||||||||||||||||20240301|",
    "PID|1||D4^^^HOSP^MR||Alive^Still||19500704|N||||||||||||||||||||||N",
    # Deletions ("") and empty repetitions.
    'PID|1||E1^^^HOSP^MR~~E2^^^HOSP^SS||""||""|""|||""||""|""',
    # Given names in the middle-name component; a name with a family only; trailing separators.
    "PID|1||F1^^^HOSP^MR||Family^Given^Middle Second^^^^D~Lonely|||M|||^^^^^^^|||||||||||||||",
]

RICH_EXISTING = {
    "resourceType": "Patient",
    "id": "existing",
    "meta": {"versionId": "3", "lastUpdated": "2024-03-01T10:00:00.000Z"},
    "active": False,
    "identifier": [{"system": "urn:oid:1.2.3", "value": "OLD-1"}],
    "name": [{"family": "Before", "given": ["Was"]}],
    "deceasedBoolean": True,
    "link": [{"other": {"reference": "Patient/other"}, "type": "replaces"}],
    "extension": [{"url": "http://example.org/ext", "valueString": "kept"}],
    "maritalStatus": {"text": "married"},
}


def _pids_of_files() -> list[tuple[str, str, str]]:
    """(name, version, PID segment) of every PID of the sample files."""
    out = []
    for path in sorted(FIXTURES.glob("*.hl7")):
        text = path.read_bytes().decode("latin-1").replace("\r\n", "\r").replace("\n", "\r")
        for number, message in enumerate(re.split(r"\r(?=MSH\|)", text)):
            header = message.split("\r", 1)[0].split("|")
            out += [
                (f"{path.name}#{number}", header[11].split("^")[0], segment)
                for segment in message.split("\r")
                if segment.startswith("PID|")
            ]
    return out


def _pid(segment: str, version: str) -> er7.Segment:
    raw = ("\r".join([HEADER.format(version=version), segment]) + "\r").encode()
    return er7.parse(raw, er7.read_header(raw, "utf-8")).first("PID")


CASES = [(f"case{n}", "2.5.1", pid) for n, pid in enumerate(PIDS)] + _pids_of_files()


def test_the_cases_cover_the_sample_files():
    assert len(CASES) > len(PIDS) + 5


@pytest.mark.parametrize(("name", "version", "segment"), CASES, ids=[c[0] for c in CASES])
def test_the_patient_built_from_a_pid_is_valid(name, version, segment):
    data = mapping.patient_data(_pid(segment, version), version)
    validate_resource(mapping.merge_patient(None, data), expected_type="Patient")
    validate_resource(mapping.merge_patient(RICH_EXISTING, data), expected_type="Patient")


def test_padded_identifier_type_codes_are_normalised():
    data = mapping.patient_data(_pid(PIDS[0], "2.5.1"), "2.5.1")
    codes = [i["type"]["coding"][0]["code"] for i in data.identifiers if "type" in i]
    assert codes == ["MR", "M R", "MR"]
