"""Users, roles and organizations: one function per operation, each atomic.

Roles (`models.Role`) decide what a web user may do:

- clinician: the viewer (worklist, studies, reports of their organizations' patients) and sign-off;
- hospital IT: the admin console (remote AEs, models, routing rules, jobs, API clients, users and
  organizations, the status page) through the "Hospital IT" group's permissions; the viewer for
  their organizations' patients, without sign-off;
- admin: a superuser: everything, every organization's patients.

A user made with `createsuperuser` (no profile) counts as admin.
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, Group, Permission
from django.db import transaction

from btt_health.console.models import Membership, Organization, Profile, Role
from integrations.fhir import store
from integrations.fhir.outcomes import FhirError

User = get_user_model()

HOSPITAL_IT_GROUP = "Hospital IT"
ORGANIZATION_SYSTEM = "urn:btt-health:organization"
USER_SYSTEM = "urn:btt-health:user"

# What hospital IT may do in the admin console: (app label, model, actions).
_HOSPITAL_IT_PERMISSIONS: list[tuple[str, str, tuple[str, ...]]] = [
    ("dicom", "remoteae", ("view", "add", "change", "delete")),
    ("ai_pipeline", "aimodel", ("view", "change")),
    ("ai_pipeline", "routingrule", ("view", "add", "change", "delete")),
    ("ai_pipeline", "inferencejob", ("view", "change")),
    ("ai_pipeline", "trustweights", ("view", "add", "change")),
    ("api_auth", "apiclient", ("view", "add", "change")),
    ("console", "organization", ("view", "add", "change")),
    ("console", "membership", ("view", "add", "change", "delete")),
    ("console", "profile", ("view", "add", "change")),
    ("console", "workerheartbeat", ("view",)),
    ("auth", "user", ("view", "add", "change")),
]


def role_of(user: AbstractBaseUser) -> str | None:
    """The user's role: the profile's, `admin` for a superuser without one, else None."""
    if not user.is_authenticated or not user.is_active:
        return None
    profile = Profile.objects.filter(user=user).only("role").first()
    if profile is not None:
        return profile.role
    return Role.ADMIN if user.is_superuser else None


def ensure_hospital_it_group() -> Group:
    """The "Hospital IT" group with its admin-console permissions (created or completed)."""
    group, _ = Group.objects.get_or_create(name=HOSPITAL_IT_GROUP)
    wanted = []
    for app_label, model, actions in _HOSPITAL_IT_PERMISSIONS:
        codenames = [f"{action}_{model}" for action in actions]
        wanted += list(Permission.objects.filter(content_type__app_label=app_label, codename__in=codenames))
    group.permissions.add(*wanted)
    return group


@transaction.atomic
def set_role(user: AbstractBaseUser, role: str) -> Profile:
    """Give `user` `role`: the profile, and the staff/superuser flags and group that go with it."""
    if role not in Role.values:
        raise ValueError(f"unknown role {role!r}; choose one of {', '.join(Role.values)}")
    profile, _ = Profile.objects.update_or_create(user=user, defaults={"role": role})
    group = ensure_hospital_it_group()
    user.is_staff = role in (Role.HOSPITAL_IT, Role.ADMIN)
    user.is_superuser = role == Role.ADMIN
    user.save(update_fields=["is_staff", "is_superuser"])
    if role == Role.HOSPITAL_IT:
        user.groups.add(group)
    else:
        user.groups.remove(group)
    return profile


@transaction.atomic
def create_user(
    username: str,
    password: str,
    role: str,
    *,
    first_name: str = "",
    last_name: str = "",
    organizations: list[Organization] | tuple[Organization, ...] = (),
) -> AbstractBaseUser:
    """Create `username` (or reset its password and names) with `role` and those memberships."""
    user, _ = User.objects.get_or_create(username=username)
    user.first_name, user.last_name = first_name, last_name
    user.is_active = True
    user.set_password(password)
    user.save()
    set_role(user, role)
    for organization in organizations:
        Membership.objects.get_or_create(user=user, organization=organization)
    return user


@transaction.atomic
def create_organization(name: str, *, ae_titles: str = "") -> Organization:
    """The organization `name` (created or updated) with its FHIR Organization.

    The FHIR Organization is a conditional create on identifier `urn:btt-health:organization|<name>`,
    so running this again reuses it.
    """
    organization, _ = Organization.objects.get_or_create(name=name)
    organization.ae_titles = ",".join(ae.strip() for ae in ae_titles.split(",") if ae.strip())
    ensure_fhir_organization(organization)
    organization.save()
    return organization


def ensure_fhir_organization(organization: Organization) -> str:
    """The logical id of the organization's FHIR Organization (written when missing; not saved)."""
    if organization.fhir_organization_id and _exists("Organization", organization.fhir_organization_id):
        return organization.fhir_organization_id
    resource = {
        "resourceType": "Organization",
        "identifier": [{"system": ORGANIZATION_SYSTEM, "value": organization.name}],
        "active": True,
        "name": organization.name,
    }
    result = store.create_resource(
        resource, if_none_exist=_identifier_query(ORGANIZATION_SYSTEM, organization.name)
    )
    organization.fhir_organization_id = result.stored.logical_id
    return organization.fhir_organization_id


@transaction.atomic
def ensure_practitioner(user: AbstractBaseUser) -> str:
    """The logical id of the FHIR Practitioner standing for `user` (created once, identifier
    `urn:btt-health:user|<username>`), remembered on the profile."""
    profile, _ = Profile.objects.select_for_update().get_or_create(user=user)
    if profile.fhir_practitioner_id and _exists("Practitioner", profile.fhir_practitioner_id):
        return profile.fhir_practitioner_id
    name: dict = {"text": display_name(user)}
    if user.last_name:
        name["family"] = user.last_name
    if user.first_name:
        name["given"] = [user.first_name]
    resource = {
        "resourceType": "Practitioner",
        "identifier": [{"system": USER_SYSTEM, "value": user.get_username()}],
        "active": True,
        "name": [name],
    }
    result = store.create_resource(
        resource, if_none_exist=_identifier_query(USER_SYSTEM, user.get_username())
    )
    profile.fhir_practitioner_id = result.stored.logical_id
    profile.save(update_fields=["fhir_practitioner_id"])
    return profile.fhir_practitioner_id


def display_name(user: AbstractBaseUser) -> str:
    full = f"{user.first_name} {user.last_name}".strip()
    return full or user.get_username()


def _identifier_query(system: str, value: str) -> str:
    # Commas, pipes and backslashes are FHIR search syntax: escaped in the value.
    escaped = value.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")
    return urlencode([("identifier", f"{system}|{escaped}")])


def _exists(resource_type: str, logical_id: str) -> bool:
    """Whether the resource exists and is not deleted."""
    try:
        store.read_resource(resource_type, logical_id)
    except FhirError:
        return False
    return True
