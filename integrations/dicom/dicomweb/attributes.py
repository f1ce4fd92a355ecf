"""DICOM attributes as DICOMweb names them: keyword or tag resolution and the default return
attributes of each query level (PS3.18 Table 10.6.3-3, formerly 6.7.1-2a). Which attributes have
index columns, and how every attribute is matched, is `integrations/dicom/matching.py` (shared
with C-FIND)."""

from __future__ import annotations

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from integrations.dicom import matching
from integrations.dicom.dicomweb.errors import bad_request

# The query levels, as the matching rules C-FIND and QIDO-RS share name them (`matching.py`, which
# also holds the attributes kept as index columns); DICOMweb's instance level is C-FIND's IMAGE.
PATIENT, STUDY, SERIES, INSTANCE = matching.PATIENT, matching.STUDY, matching.SERIES, matching.IMAGE

SPECIFIC_CHARACTER_SET = "00080005"
RETRIEVE_URL = "00081190"
INSTANCE_AVAILABILITY = "00080056"
TIMEZONE_OFFSET = "00080201"

# Default return attributes. Those in OPTIONAL_DEFAULTS are returned only when they have a value;
# the others always (empty when the objects do not carry them), as C-FIND returns its keys.
STUDY_DEFAULTS = (
    "00080020",  # StudyDate
    "00080030",  # StudyTime
    "00080050",  # AccessionNumber
    "00080056",  # InstanceAvailability
    "00080061",  # ModalitiesInStudy
    "00080090",  # ReferringPhysicianName
    "00080201",  # TimezoneOffsetFromUTC
    "00081030",  # StudyDescription (not required; every viewer asks for it)
    "00081190",  # RetrieveURL
    "00100010",  # PatientName
    "00100020",  # PatientID
    "00100030",  # PatientBirthDate
    "00100040",  # PatientSex
    "0020000D",  # StudyInstanceUID
    "00200010",  # StudyID
    "00201206",  # NumberOfStudyRelatedSeries
    "00201208",  # NumberOfStudyRelatedInstances
)
SERIES_DEFAULTS = (
    "00080060",  # Modality
    "00080201",  # TimezoneOffsetFromUTC
    "0008103E",  # SeriesDescription
    "00081190",  # RetrieveURL
    "0020000D",  # StudyInstanceUID (to address the series)
    "0020000E",  # SeriesInstanceUID
    "00200011",  # SeriesNumber
    "00201209",  # NumberOfSeriesRelatedInstances
    "00400244",  # PerformedProcedureStepStartDate
    "00400245",  # PerformedProcedureStepStartTime
    "00400275",  # RequestAttributeSequence
)
INSTANCE_DEFAULTS = (
    "00080016",  # SOPClassUID
    "00080018",  # SOPInstanceUID
    "00080056",  # InstanceAvailability
    "00080201",  # TimezoneOffsetFromUTC
    "00081190",  # RetrieveURL
    "0020000D",  # StudyInstanceUID
    "0020000E",  # SeriesInstanceUID
    "00200013",  # InstanceNumber
    "00280008",  # NumberOfFrames
    "00280010",  # Rows
    "00280011",  # Columns
    "00280100",  # BitsAllocated
)
OPTIONAL_DEFAULTS = frozenset({TIMEZONE_OFFSET, "00280008", "00280010", "00280011", "00280100"})


def tag_hex(tag: int) -> str:
    return f"{tag:08X}"


def resolve(name: str, parameter: str | None = None) -> str:
    """The 8-hex-digit tag of `name` (a keyword such as `PatientName`, or a tag `00100010`).

    Raises a 400 naming `parameter` (or the name) when it is neither.
    """
    text = name.strip()
    if len(text) == 8 and all(c in "0123456789abcdefABCDEF" for c in text):
        return text.upper()
    tag = tag_for_keyword(text)
    if tag is None:
        shown = parameter if parameter is not None else name
        raise bad_request(f"{shown!r} is not a DICOM attribute keyword or tag (e.g. PatientName or 00100010)")
    return tag_hex(tag)


def resolve_path(name: str, parameter: str | None = None) -> tuple[str, ...]:
    """A dotted attribute path (`RequestAttributeSequence.ScheduledProcedureStepID`) as tags."""
    return tuple(resolve(piece, parameter if parameter is not None else name) for piece in name.split("."))


def vr_of(tag: str) -> str:
    """The VR the data dictionary gives `tag` (the first of ambiguous ones; UN when unknown)."""
    try:
        vr = dictionary_VR(int(tag, 16))
    except KeyError:
        return "UN"
    return vr.split(" or ")[0]


def keyword_of(tag: str) -> str:
    return keyword_for_tag(int(tag, 16)) or tag
