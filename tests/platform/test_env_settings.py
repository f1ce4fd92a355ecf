"""Typed environment readers fail loudly, naming the variable, the value and what was expected."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from btt_health.env import (
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_optional_str,
    env_path,
    env_str,
)
from tests.processes import run_manage


def test_unset_and_empty_values_give_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BTT_T_UNSET", raising=False)
    monkeypatch.setenv("BTT_T_EMPTY", "   ")
    for name in ("BTT_T_UNSET", "BTT_T_EMPTY"):
        assert env_str(name, "d") == "d"
        assert env_optional_str(name) is None
        assert env_int(name, 7) == 7
        assert env_float(name, 1.5) == 1.5
        assert env_bool(name, True) is True
        assert env_choice(name, "INFO", ("INFO", "DEBUG")) == "INFO"
        assert env_list(name, ["a"]) == ["a"]


def test_values_are_parsed_and_stripped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BTT_T_INT", " 8080 ")
    monkeypatch.setenv("BTT_T_FLOAT", "2.5")
    monkeypatch.setenv("BTT_T_LIST", "default, inference,,ledger ")
    monkeypatch.setenv("BTT_T_PATH", "relative/dir")
    monkeypatch.chdir(tmp_path)
    assert env_int("BTT_T_INT", 1, minimum=1, maximum=65535) == 8080
    assert env_float("BTT_T_FLOAT", 0.0, minimum=0) == 2.5
    assert env_list("BTT_T_LIST", []) == ["default", "inference", "ledger"]
    assert env_path("BTT_T_PATH", Path("/unused")) == tmp_path.resolve() / "relative" / "dir"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        ("on", True),
        ("0", False),
        ("False", False),
        ("no", False),
        ("off", False),
    ],
)
def test_booleans(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("BTT_T_BOOL", value)
    assert env_bool("BTT_T_BOOL", not expected) is expected


@pytest.mark.parametrize(
    ("value", "read", "message"),
    [
        ("abc", lambda: env_int("BTT_T_BAD", 1), "BTT_T_BAD must be an integer, got 'abc'"),
        ("1.5", lambda: env_int("BTT_T_BAD", 1), "BTT_T_BAD must be an integer, got '1.5'"),
        (
            "0",
            lambda: env_int("BTT_T_BAD", 1, minimum=1, maximum=10),
            "BTT_T_BAD must be between 1 and 10, got 0",
        ),
        (
            "99",
            lambda: env_int("BTT_T_BAD", 1, minimum=1, maximum=10),
            "BTT_T_BAD must be between 1 and 10, got 99",
        ),
        ("fast", lambda: env_float("BTT_T_BAD", 1.0), "BTT_T_BAD must be a number, got 'fast'"),
        ("-1", lambda: env_float("BTT_T_BAD", 1.0, minimum=0), "BTT_T_BAD must be at least 0, got -1.0"),
        ("maybe", lambda: env_bool("BTT_T_BAD", True), "BTT_T_BAD must be a boolean"),
        (
            "LOUD",
            lambda: env_choice("BTT_T_BAD", "INFO", ("INFO", "DEBUG")),
            "BTT_T_BAD must be one of INFO, DEBUG, got 'LOUD'",
        ),
    ],
)
def test_bad_values_raise_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, read, message: str
) -> None:
    monkeypatch.setenv("BTT_T_BAD", value)
    with pytest.raises(ImproperlyConfigured) as excinfo:
        read()
    assert message in str(excinfo.value)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("BTT_HTTP_PORT", "abc", "BTT_HTTP_PORT must be an integer, got 'abc'"),
        ("BTT_HTTP_PORT", "70000", "BTT_HTTP_PORT must be between 1 and 65535, got 70000"),
        ("BTT_RUN_WORKER", "sometimes", "BTT_RUN_WORKER must be a boolean"),
        ("DATABASE_URL", "mysql://u@h/db", "DATABASE_URL must point at PostgreSQL or SQLite"),
    ],
)
def test_manage_py_stops_at_start_on_a_bad_value(name: str, value: str, message: str) -> None:
    """The process refuses to start (non-zero exit) and says which variable is wrong and why."""
    result = run_manage("check", env={**os.environ, name: value})
    assert result.returncode != 0
    # The message is the last thing printed, where an operator looks first.
    assert message in result.stderr.strip().splitlines()[-1], result.stderr
