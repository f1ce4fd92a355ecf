"""How a key's values are read (`integrations.dicom.matching.parse`): the rules C-FIND and
QIDO-RS share, without a database. Universal matching, Empty Value Matching, single values and
wildcards, numbers, and DA / TM / DT ranges with the period an incomplete bound names; malformed
values are refused with a reason (C-FIND answers 0xA900 with it, QIDO-RS 400).
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from integrations.dicom.matching import (
    DATE,
    DATETIME,
    NUMBER,
    PN,
    SEQUENCE,
    TEXT,
    TIME,
    UID,
    UNMATCHABLE,
    KeyMatch,
    MatchError,
    Value,
    combine_date_time,
    parse,
)


def key(value: str, kind: str) -> KeyMatch:
    match = parse([value], kind)
    assert match is not None
    return match


def one(value: str, kind: str) -> Value:
    match = parse([value], kind)
    assert match is not None
    (single,) = match.values
    return single


@pytest.mark.parametrize("kind", [TEXT, PN, UID, DATE, TIME, DATETIME, NUMBER])
def test_no_value_or_only_asterisks_is_universal(kind: str) -> None:
    assert parse([], kind) is None
    assert parse(["*"], kind) is None
    assert parse(["**"], kind) is None
    assert parse(["CT", "*"], TEXT) is None  # a list with a universal value matches everything


def test_two_quotation_marks_ask_for_an_empty_value() -> None:
    assert one('""', TEXT) == Value("empty")
    assert one('""', DATE) == Value("empty")
    assert parse(['""', "CT"], TEXT) == KeyMatch(TEXT, (Value("empty"), Value("eq", text="CT")))


def test_single_values_and_wildcards() -> None:
    assert one("Doe^John", PN) == Value("eq", text="Doe^John")
    assert one("Doe*", PN) == Value("wildcard", text="Doe*")
    assert one("C?", TEXT) == Value("wildcard", text="C?")
    assert one("1.2.3", UID) == Value("eq", text="1.2.3")
    assert one("1.2.*", UID) == Value("eq", text="1.2.*")  # no wildcards in UIDs (C.2.2.2.4)


def test_numbers_compare_as_numbers() -> None:
    assert one("4", NUMBER) == Value("eq", number=Decimal(4))
    assert one("1.50", NUMBER).number == Decimal("1.5")
    with pytest.raises(MatchError, match="'two' is not a number"):
        parse(["two"], NUMBER)
    with pytest.raises(MatchError):
        parse(["NaN"], NUMBER)


def test_dates_and_date_ranges() -> None:
    assert one("20200115", DATE) == Value("eq", text="20200115")
    assert one("2020.01.15", DATE) == Value("eq", text="20200115")  # ACR-NEMA form
    assert one("20200101-20201231", DATE) == Value("range", low="20200101", high="20201231")
    assert one("-20200115", DATE) == Value("range", high="20200115")
    assert one("20200115-", DATE) == Value("range", low="20200115")
    # An incomplete upper bound covers its whole year or month.
    assert one("2020-2021", DATE) == Value("range", low="2020", high="20219999")
    assert one("202002-202002", DATE) == Value("range", low="202002", high="20200299")


@pytest.mark.parametrize("value", ["2020", "20201301", "20200132", "2020x-", "-", "yesterday"])
def test_malformed_dates_are_refused(value: str) -> None:
    with pytest.raises(MatchError, match="is not a DICOM date"):
        parse([value], DATE)


def test_times_name_periods() -> None:
    # A single time is the period it names; so is an upper bound.
    assert one("1015", TIME) == Value("range", low="1015", high="101599.999999")
    assert one("101530.25", TIME) == Value("range", low="101530.25", high="101530.259999")
    assert one("10:15", TIME) == Value("range", low="1015", high="101599.999999")  # old form
    assert one("1000-1200", TIME) == Value("range", low="1000", high="120099.999999")
    assert one("-08", TIME) == Value("range", high="089999.999999")


@pytest.mark.parametrize("value", ["25:00", "2460", "1", "10.5", "-", "noon"])
def test_malformed_times_are_refused(value: str) -> None:
    with pytest.raises(MatchError, match="is not a DICOM time"):
        parse([value], TIME)


def test_date_times_and_their_ranges() -> None:
    assert one("20200115", DATETIME) == Value("range", low="20200115", high="20200115999999.999999")
    assert one("2020-2021", DATETIME) == Value("range", low="2020", high="20219999999999.999999")
    # A UTC offset follows the hour at least; it is not applied (no timezone adjustment).
    assert one("20200115101500-0500", DATETIME) == Value(
        "range", low="20200115101500", high="20200115101500.999999"
    )
    assert one("20200115101500+0100-20200116", DATETIME) == Value(
        "range", low="20200115101500", high="20200116999999.999999"
    )
    with pytest.raises(MatchError, match="is not a DICOM date-time"):
        parse(["2020011510.5"], DATETIME)


def test_binary_and_sequence_values_cannot_be_matched() -> None:
    with pytest.raises(MatchError):
        parse(["abc"], UNMATCHABLE)
    with pytest.raises(MatchError):
        parse(["abc"], SEQUENCE)


def test_combined_date_time_is_one_range() -> None:
    date, time = key("20060705-20060707", DATE), key("1000-1800", TIME)
    assert combine_date_time(date, time) == KeyMatch(
        DATETIME, (Value("range", low="200607051000", high="20060707180099.999999"),)
    )
    years, evening = key("2020-2021", DATE), key("1800-", TIME)
    # The whole years: from 2020-01-01 18:00 to the end of 2021-12-31.
    assert combine_date_time(years, evening) == KeyMatch(
        DATETIME, (Value("range", low="202001011800", high="20211231999999.999999"),)
    )
    assert combine_date_time(key("20060705", DATE), time) is None  # not a pair of ranges
