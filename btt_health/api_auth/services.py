"""API clients, bearer tokens and the scopes a caller holds.

A request is authenticated into a `Principal` carrying SMART-style scopes
(`system/Patient.read`, `system/*.write`, ...). Views ask the principal, never the role, so an
OAuth2/SMART authenticator can later produce principals from access tokens without touching them.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

from django.db import transaction
from django.http import HttpRequest

from btt_health.api_auth.models import ApiClient

TOKEN_PREFIX = "btt_"

# The scopes each role grants, in SMART v1 syntax (compartment/ResourceType.access).
ROLE_SCOPES: dict[str, frozenset[str]] = {
    ApiClient.Role.ADMIN: frozenset({"system/*.*", "admin"}),
    ApiClient.Role.HOSPITAL_IT: frozenset({"system/*.*"}),
    ApiClient.Role.CLINICIAN: frozenset({"system/*.*"}),
    ApiClient.Role.READER: frozenset({"system/*.read"}),
}


class AuthenticationFailed(Exception):
    """The request carries no usable credentials; the message says what is wrong."""


@dataclass(frozen=True)
class Principal:
    """Who is calling and what they may do."""

    name: str
    role: str
    scopes: frozenset[str]

    def may(self, resource_type: str, access: str) -> bool:
        """Whether the scopes allow `access` ('read' or 'write') on `resource_type`."""
        for scope in self.scopes:
            if "/" not in scope or "." not in scope:
                continue
            _, rest = scope.split("/", 1)
            scope_type, scope_access = rest.rsplit(".", 1)
            if scope_type in ("*", resource_type) and scope_access in ("*", access):
                return True
        return False

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@transaction.atomic
def create_api_client(name: str, role: str) -> tuple[ApiClient, str]:
    """Create (or re-key) the API client `name` with `role`; return it and its new bearer token.

    The token is shown only here: only its hash is kept. Re-running for an existing name issues
    a fresh token and invalidates the old one.
    """
    if role not in ApiClient.Role.values:
        raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ApiClient.Role.values)}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    client, _ = ApiClient.objects.update_or_create(
        name=name,
        defaults={
            "role": role,
            "token_hash": hash_token(token),
            "token_prefix": token[:12],
            "is_active": True,
        },
    )
    _cache.clear()
    return client, token


class _TokenCache:
    """A short-lived per-process cache of token hash -> Principal, so reads cost no auth query.

    Entries live `ttl` seconds: a revoked token stops working within that time everywhere.
    """

    def __init__(self, ttl: float = 30.0) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Principal | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key: str, principal: Principal) -> None:
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[key] = (time.monotonic() + self.ttl, principal)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_cache = _TokenCache()


def authenticate_bearer(request: HttpRequest) -> Principal:
    """The principal for the request's `Authorization: Bearer` token, or AuthenticationFailed."""
    header = request.META.get("HTTP_AUTHORIZATION")
    if not header:
        raise AuthenticationFailed("missing Authorization header; send 'Authorization: Bearer <token>'")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("Authorization header must be 'Bearer <token>'")
    key = hash_token(token.strip())
    principal = _cache.get(key)
    if principal is not None:
        return principal
    client = ApiClient.objects.filter(token_hash=key, is_active=True).only("name", "role").first()
    if client is None:
        raise AuthenticationFailed("bearer token is not valid or has been revoked")
    principal = Principal(name=client.name, role=client.role, scopes=ROLE_SCOPES[client.role])
    _cache.put(key, principal)
    return principal
