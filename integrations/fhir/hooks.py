"""Post-write hooks of the FHIR store: code that must run whenever a resource type is written.

Other parts announce events from what is written (a DiagnosticReport becoming final, say) without
the store knowing about them, and whatever path wrote the resource (the REST API, a transaction
Bundle, a service function of another part): `store.py` calls `run_write_hooks` after each new
version is in place (record, version row and index), inside the write's transaction.

- `on_write(resource_type, hook)`: call `hook(WrittenVersion)` after every create or update of that
  type (deletions are not announced). Usually from an AppConfig.ready(); registering the same hook
  twice is a no-op.
- A hook runs in the writing transaction: what it writes commits or rolls back with the resource,
  and an exception it raises fails the write (the REST client then gets a 500 and nothing is
  stored). Hooks should be quick and queue slow work with `transaction.on_commit`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import orjson


@dataclass(frozen=True)
class WrittenVersion:
    """A version the store just wrote, and the one it replaced."""

    resource_type: str
    logical_id: str
    version_id: int
    last_updated: datetime
    resource: dict  # the new version as stored (id and meta set)
    previous_text: str  # the JSON of the version it replaced; "" when created or previously deleted

    @property
    def previous(self) -> dict | None:
        """The replaced version as a dict (None when there was none, or it was a deletion)."""
        return orjson.loads(self.previous_text) if self.previous_text else None


WriteHook = Callable[[WrittenVersion], None]

_lock = threading.Lock()
_hooks: dict[str, tuple[WriteHook, ...]] = {}


def on_write(resource_type: str, hook: WriteHook) -> WriteHook:
    """Call `hook` after every create or update of `resource_type` (see the module docstring)."""
    with _lock:
        current = _hooks.get(resource_type, ())
        if hook not in current:
            _hooks[resource_type] = (*current, hook)
    return hook


def remove_hook(resource_type: str, hook: WriteHook) -> bool:
    """Stop calling `hook` for `resource_type`; whether it was registered."""
    with _lock:
        current = _hooks.get(resource_type, ())
        if hook not in current:
            return False
        _hooks[resource_type] = tuple(h for h in current if h is not hook)
        return True


def has_hooks(resource_type: str) -> bool:
    """Whether any hook is registered for `resource_type` (lets the store skip building the argument)."""
    return bool(_hooks.get(resource_type))


def run_write_hooks(written: WrittenVersion) -> None:
    """Call the hooks of `written.resource_type` in registration order; an exception propagates."""
    for hook in _hooks.get(written.resource_type, ()):
        hook(written)
