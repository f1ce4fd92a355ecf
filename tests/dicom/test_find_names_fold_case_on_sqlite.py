"""Person names match case-insensitively on the embedded SQLite database too, for every letter
(SQLite's own LIKE and lower() fold only ASCII: `MÜLLER*` would not find `Müller`).

Whatever database the suite runs on, these tests open an SQLite database of their own (a file
in the test's folder, tables made from the models) as Django opens one, so the `btt_fold`
function is registered by the app's `connection_created` receiver, and run the matching rules
C-FIND and QIDO-RS share (`integrations.dicom.matching`) there: an indexed name column, and a
name kept in the DICOM JSON `tags`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connections

from integrations.dicom import matching
from integrations.dicom.models import DicomPatient, Series, Study

ALIAS = "fold_case_sqlite"


@pytest.fixture
def sqlite_db(tmp_path: Path, django_db_blocker) -> Iterator[str]:
    """An SQLite database with the DICOM index tables, as connection `ALIAS` (the test database
    itself is not used: no django_db mark, so Django's test case does not wrap this alias)."""
    own = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "index.sqlite3")}
    # configure_settings fills in Django's defaults (it wants the default database alongside).
    connections.settings[ALIAS] = connections.configure_settings(
        {"default": dict(connections.settings["default"]), ALIAS: own}
    )[ALIAS]
    try:
        with django_db_blocker.unblock():
            with connections[ALIAS].schema_editor() as editor:
                for model in (DicomPatient, Study, Series):
                    editor.create_model(model)
            yield ALIAS
    finally:
        connections[ALIAS].close()
        del connections[ALIAS]
        del connections.settings[ALIAS]


@pytest.fixture
def patients(sqlite_db: str) -> str:
    for patient_id, name in [
        ("P1", "Müller^Jürgen"),
        ("P2", "MÜLLER^ÅSA"),
        ("P3", "Mueller^Hans"),
        ("P4", "Ødegård^Ørjan=オデゴール^オルヤン"),
        ("P5", "Doe^John"),
    ]:
        patient = DicomPatient.objects.using(sqlite_db).create(
            patient_id=patient_id,
            patient_name=name,
            # A name without a column: Other Patient Names, in the patient's DICOM JSON.
            tags={"00101001": {"vr": "PN", "Value": [{"Alphabetic": name.split("=")[0].upper()}]}},
        )
        assert patient.pk
    return sqlite_db


def by_column(alias: str, *values: str) -> list[str]:
    match = matching.parse(list(values), matching.PN)
    condition = matching.attribute_condition(matching.PATIENT, matching.INDEXED["PatientName"], match)
    return sorted(DicomPatient.objects.using(alias).filter(condition).values_list("patient_id", flat=True))


def by_json(alias: str, *values: str) -> list[str]:
    match = matching.parse(list(values), matching.PN)
    condition = matching.json_condition(matching.PATIENT, [matching.PATIENT], 0x00101001, match)
    return sorted(DicomPatient.objects.using(alias).filter(condition).values_list("patient_id", flat=True))


def test_the_fold_function_is_registered_on_new_sqlite_connections(sqlite_db: str) -> None:
    assert connections[sqlite_db].vendor == "sqlite"
    with connections[sqlite_db].cursor() as cursor:
        cursor.execute("SELECT btt_fold(%s)", ["MÜLLER^ÅSA Ødegård"])
        assert cursor.fetchone()[0] == "müller^åsa ødegård"


def test_wildcards_fold_non_ascii_letters_on_sqlite(patients: str) -> None:
    assert by_column(patients, "MÜLLER*") == ["P1", "P2"]
    assert by_column(patients, "müller^j?rgen") == ["P1"]
    assert by_column(patients, "*^åsa") == ["P2"]
    assert by_column(patients, "ØDEGÅRD*") == ["P4"]  # the alphabetic group of a name with three


def test_single_values_fold_non_ascii_letters_on_sqlite(patients: str) -> None:
    assert by_column(patients, "müller^jürgen") == ["P1"]
    assert by_column(patients, "ødegård^ørjan") == ["P4"]
    assert by_column(patients, "müller") == []  # a single value is the whole name, not a prefix


def test_names_in_the_dicom_json_fold_too_on_sqlite(patients: str) -> None:
    assert by_json(patients, "müller*") == ["P1", "P2"]
    assert by_json(patients, "ødegård^ørjan") == ["P4"]
    assert by_json(patients, "Mueller^Hans") == ["P3"]
