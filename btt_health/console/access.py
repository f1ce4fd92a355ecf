"""Which patients and studies a web user may see: the one place the viewer's scoping is decided.

How a study belongs to an organization (checked in SQL, for the worklist and for every single
study, image and report the viewer serves):

1. the study's patient (the FHIR Patient the DICOM node linked it to) has
   `Patient.managingOrganization` = the organization's FHIR Organization; this is authoritative:
   when it is set, nothing else counts;
2. otherwise (a patient known only from DICOM, whose Patient the node created without an
   organization), the study belongs to the organization whose AE titles (`Organization.ae_titles`)
   include the AE that sent it (`calling_ae`).

A clinician or hospital-IT user sees the studies that belong to any of their organizations; an
admin (or a superuser without a profile) sees every study; a user without a role sees none.
Anything else answers "not found", never "forbidden", so a user cannot even learn that a study UID
exists in another organization.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q

from btt_health.console.accounts import role_of
from btt_health.console.models import Organization, Role
from integrations.fhir.search import find_matches


class NotVisible(LookupError):
    """The study (or report, image) does not exist or belongs to no organization of the user."""


def organizations_of(user: AbstractBaseUser) -> list[Organization]:
    if not user.is_authenticated:
        return []
    return list(Organization.objects.filter(memberships__user=user).order_by("name"))


def sees_everything(user: AbstractBaseUser) -> bool:
    return role_of(user) == Role.ADMIN


def study_filter(user: AbstractBaseUser) -> Q:
    """A filter on the DICOM index's `Study` rows: the studies `user` may see."""
    role = role_of(user)
    if role is None:
        return Q(pk__in=[])
    if role == Role.ADMIN:
        return Q()
    organizations = organizations_of(user)
    references = [o.fhir_reference for o in organizations if o.fhir_reference]
    ae_titles = sorted({ae for o in organizations for ae in o.ae_title_list})
    condition = Q(pk__in=[])
    if references:
        managed = find_matches("Patient", [("organization", ",".join(references))]).values("logical_id")
        condition |= Q(patient__fhir_patient_id__in=managed)
    if ae_titles:
        with_organization = find_matches("Patient", [("organization:missing", "false")]).values("logical_id")
        condition |= Q(calling_ae__in=ae_titles) & ~Q(patient__fhir_patient_id__in=with_organization)
    return condition


def patient_visible(user: AbstractBaseUser, fhir_patient_id: str) -> bool:
    """Whether `user` may see the FHIR Patient `fhir_patient_id` (some study of theirs is visible,
    or its managing organization is one of theirs)."""
    from integrations.dicom.models import Study

    if not fhir_patient_id:
        return False
    if sees_everything(user):
        return True
    references = [o.fhir_reference for o in organizations_of(user) if o.fhir_reference]
    if (
        references
        and find_matches(
            "Patient", [("_id", fhir_patient_id), ("organization", ",".join(references))]
        ).exists()
    ):
        return True
    return Study.objects.filter(study_filter(user), patient__fhir_patient_id=fhir_patient_id).exists()
