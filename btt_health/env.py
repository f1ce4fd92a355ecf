"""Typed readers for environment variables that fail loudly.

Every setting of the server comes from the environment. A value that cannot be read as the
type asked for stops the process at start with a message naming the variable, the value
and what was expected, instead of a confusing failure later.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def env_str(name: str, default: str) -> str:
    """The variable as a string, or `default` when unset or empty."""
    value = _raw(name)
    return default if value is None else value


def env_optional_str(name: str) -> str | None:
    """The variable as a string, or None when unset or empty."""
    return _raw(name)


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """The variable as an integer within [minimum, maximum]."""
    value = _raw(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ImproperlyConfigured(f"{name} must be between {minimum} and {maximum}, got {number}")
    return number


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    """The variable as a float, at least `minimum` when given."""
    value = _raw(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {number}")
    return number


def env_bool(name: str, default: bool) -> bool:
    """The variable as a boolean: one of 1/0, true/false, yes/no, on/off."""
    value = _raw(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false, 1/0, yes/no), got {value!r}")


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    """The variable as one of `choices`."""
    value = env_str(name, default)
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    """The variable as a comma-separated list of non-empty strings."""
    value = _raw(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_path(name: str, default: Path) -> Path:
    """The variable as an absolute path (relative paths are taken from the working directory)."""
    value = _raw(name)
    return (Path(value) if value is not None else default).expanduser().resolve()


def env_tls_files(prefix: str) -> tuple[str | None, str | None, str | None]:
    """`<prefix>_TLS_CERT`, `<prefix>_TLS_KEY` and `<prefix>_TLS_CA` (PEM file paths): certificate
    and key set together or not at all, each one set naming a readable file."""
    names = (f"{prefix}_TLS_CERT", f"{prefix}_TLS_KEY", f"{prefix}_TLS_CA")
    cert, key, ca = (env_optional_str(name) for name in names)
    if (cert is None) != (key is None):
        raise ImproperlyConfigured(f"{names[0]} and {names[1]} must be set together")
    for name, value in zip(names, (cert, key, ca), strict=True):
        if value is not None and not Path(value).is_file():
            raise ImproperlyConfigured(f"{name} must name a readable file, got {value!r}")
    return cert, key, ca
