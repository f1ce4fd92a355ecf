"""The clinician worklist: the studies a user may see, with patient, order, AI status and trust score.

Studies come from the DICOM node's index (read only, like `ai_pipeline/study_source.py`), joined in
SQL with the latest inference job of each study (its state, the order's priority and the trust
score) and scoped by `access.study_filter`. Only the page shown is then enriched from the FHIR
store: the report's status (preliminary or signed) and the order's priority from the
ServiceRequests the ImagingStudy is based on.

`worklist(user, query)` returns a `WorklistPage`; `WorklistQuery.from_params` reads (and checks)
the filters, sort and page from a query string.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import orjson
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.paginator import Paginator
from django.db.models import Case, F, IntegerField, OuterRef, Q, Subquery, Value, When

from ai_pipeline.models import InferenceJob
from btt_health.console import access
from integrations.dicom.models import Study
from integrations.fhir import store
from integrations.fhir.outcomes import FhirError

# AI status shown to clinicians (InferenceJob.State, with "done" for succeeded and "none" without a job).
AI_STATUSES = ("queued", "running", "done", "failed", "none")
_JOB_STATE = {"queued": "queued", "running": "running", "done": "succeeded", "failed": "failed"}
PRIORITY_RANK = {"stat": 0, "asap": 1, "urgent": 2, "routine": 3}

# sort key -> ORM ordering (ascending); "-key" sorts descending.
SORTS = {
    "received": ("last_received_at", "pk"),
    "date": ("study_date", "study_time", "pk"),
    "patient": ("patient__patient_name", "pk"),
    "modality": ("modalities_in_study", "pk"),
    "accession": ("accession_number", "pk"),
    "priority": ("priority_rank", "pk"),
    "status": ("ai_state", "pk"),
    "trust": ("trust_score", "pk"),
}
DEFAULT_SORT = "-received"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class QueryError(ValueError):
    """A filter, sort or page value that cannot be used; the message names it."""


@dataclass(frozen=True)
class WorklistQuery:
    date_from: str = ""  # YYYY-MM-DD
    date_to: str = ""
    modality: str = ""
    status: str = ""
    patient: str = ""  # name, Patient ID or accession, case-insensitive substring
    sort: str = DEFAULT_SORT
    page: int = 1

    @classmethod
    def from_params(cls, params) -> WorklistQuery:
        """Read a query string (a QueryDict or dict); QueryError for a bad value."""
        get = params.get
        values = {
            "date_from": (get("date_from") or "").strip(),
            "date_to": (get("date_to") or "").strip(),
            "modality": (get("modality") or "").strip().upper(),
            "status": (get("status") or "").strip().lower(),
            "patient": (get("patient") or "").strip(),
            "sort": (get("sort") or DEFAULT_SORT).strip(),
        }
        for name in ("date_from", "date_to"):
            if values[name] and not _DATE.match(values[name]):
                raise QueryError(f"{name} must be a date YYYY-MM-DD, got {values[name]!r}")
        if values["modality"] and not re.fullmatch(r"[A-Z0-9]{1,16}", values["modality"]):
            raise QueryError(f"modality must be a DICOM modality such as CT, got {values['modality']!r}")
        if values["status"] and values["status"] not in AI_STATUSES:
            raise QueryError(f"status must be one of {', '.join(AI_STATUSES)}, got {values['status']!r}")
        if values["sort"].lstrip("-") not in SORTS:
            raise QueryError(f"sort must be one of {', '.join(SORTS)} (prefix - for descending)")
        page_text = (get("page") or "1").strip()
        if not page_text.isdigit() or int(page_text) < 1:
            raise QueryError(f"page must be a positive integer, got {page_text!r}")
        return cls(**values, page=int(page_text))

    def as_params(self, **changes) -> dict[str, str]:
        """The query as query-string values (empty ones left out), with `changes` applied."""
        values = {
            "date_from": self.date_from,
            "date_to": self.date_to,
            "modality": self.modality,
            "status": self.status,
            "patient": self.patient,
            "sort": self.sort,
            "page": str(self.page),
            **{k: str(v) for k, v in changes.items()},
        }
        if values["sort"] == DEFAULT_SORT:
            values.pop("sort")
        if values["page"] == "1":
            values.pop("page")
        return {k: v for k, v in values.items() if v}


@dataclass
class WorklistRow:
    study_instance_uid: str
    patient_name: str
    patient_id: str
    birth_date: str
    modalities: str
    study_date: str  # YYYY-MM-DD or ""
    study_time: str  # HH:MM or ""
    description: str
    accession_number: str
    instances: int
    priority: str
    ai_status: str
    ai_reason: str
    trust_score: float | None
    report_id: str
    report_status: str
    received_at: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class WorklistPage:
    rows: list[WorklistRow]
    total: int
    page: int
    pages: int
    page_size: int
    query: WorklistQuery
    signature: str = ""
    organizations: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "total": self.total,
            "page": self.page,
            "pages": self.pages,
            "page_size": self.page_size,
            "signature": self.signature,
            "studies": [row.as_dict() for row in self.rows],
        }


def _latest_job(column: str) -> Subquery:
    jobs = InferenceJob.objects.filter(study_instance_uid=OuterRef("study_instance_uid")).order_by(
        "-queued_at", "-pk"
    )
    return Subquery(jobs.values(column)[:1])


def studies_for(user: AbstractBaseUser):
    """The `Study` rows `user` may see, annotated with their latest inference job."""
    return (
        Study.objects.filter(access.study_filter(user))
        .select_related("patient")
        .annotate(
            ai_state=_latest_job("state"),
            ai_reason=_latest_job("reason"),
            trust_score=_latest_job("trust_score"),
            job_priority=_latest_job("priority"),
            report_id=_latest_job("diagnostic_report_id"),
            priority_rank=Case(
                *[When(job_priority=code, then=Value(rank)) for code, rank in PRIORITY_RANK.items()],
                default=Value(4),
                output_field=IntegerField(),
            ),
        )
    )


def _modality_q(modality: str) -> Q:
    # modalities_in_study is backslash-separated ("CT\SR"): match a whole value.
    return (
        Q(modalities_in_study=modality)
        | Q(modalities_in_study__startswith=modality + "\\")
        | Q(modalities_in_study__endswith="\\" + modality)
        | Q(modalities_in_study__contains="\\" + modality + "\\")
    )


def worklist(user: AbstractBaseUser, query: WorklistQuery) -> WorklistPage:
    """One page of the studies `user` may see that match `query` (read only)."""
    studies = studies_for(user)
    if query.date_from:
        studies = studies.filter(study_date__gte=query.date_from.replace("-", ""))
    if query.date_to:
        studies = studies.filter(study_date__lte=query.date_to.replace("-", ""), study_date__gt="")
    if query.modality:
        studies = studies.filter(_modality_q(query.modality))
    if query.status == "none":
        studies = studies.filter(ai_state__isnull=True)
    elif query.status:
        studies = studies.filter(ai_state=_JOB_STATE[query.status])
    for term in query.patient.split():
        # A DICOM person name is Family^Given: "doe jane" finds DOE^JANE.
        studies = studies.filter(
            Q(patient__patient_name__icontains=term)
            | Q(patient__patient_id__icontains=term)
            | Q(accession_number__icontains=term)
        )
    key = query.sort.lstrip("-")
    columns = SORTS[key]
    if query.sort.startswith("-"):
        ordering = [F(c).desc(nulls_last=True) for c in columns]
    else:
        ordering = [F(c).asc(nulls_last=True) for c in columns]
    studies = studies.order_by(*ordering)

    page_size = settings.BTT_CONSOLE_PAGE_SIZE
    paginator = Paginator(studies, page_size)
    page_number = min(query.page, max(paginator.num_pages, 1))
    page = paginator.page(page_number)
    rows = [_row(study) for study in page.object_list]
    signature = hashlib.sha256(orjson.dumps([paginator.count, [row.as_dict() for row in rows]])).hexdigest()[
        :16
    ]
    return WorklistPage(
        rows=rows,
        total=paginator.count,
        page=page_number,
        pages=paginator.num_pages,
        page_size=page_size,
        query=query,
        signature=signature,
        organizations=[o.name for o in access.organizations_of(user)],
    )


def _row(study: Study) -> WorklistRow:
    state = study.ai_state or ""
    ai_status = {"succeeded": "done"}.get(state, state) or "none"
    report_status = _report_status(study.report_id or "")
    priority = _order_priority(study) or study.job_priority or ""
    date = study.study_date
    time = study.study_time
    return WorklistRow(
        study_instance_uid=study.study_instance_uid,
        patient_name=person_name(study.patient.patient_name),
        patient_id=study.patient.patient_id,
        birth_date=dicom_date(study.patient.birth_date),
        modalities=study.modalities_in_study.replace("\\", ", "),
        study_date=dicom_date(date),
        study_time=f"{time[:2]}:{time[2:4]}" if len(time) >= 4 and time[:4].isdigit() else "",
        description=study.study_description,
        accession_number=study.accession_number,
        instances=study.number_of_instances,
        priority=priority,
        ai_status=ai_status,
        ai_reason=study.ai_reason or "",
        trust_score=study.trust_score,
        report_id=study.report_id or "",
        report_status=report_status,
        received_at=study.last_received_at.isoformat() if study.last_received_at else "",
    )


def _report_status(report_id: str) -> str:
    if not report_id:
        return ""
    try:
        return store.read_resource("DiagnosticReport", report_id).as_dict().get("status", "")
    except FhirError:
        return ""


def _order_priority(study: Study) -> str:
    """The most urgent priority among the ServiceRequests the study's ImagingStudy is based on."""
    if not study.fhir_imaging_study_id:
        return ""
    try:
        imaging = store.read_resource("ImagingStudy", study.fhir_imaging_study_id).as_dict()
    except FhirError:
        return ""
    priorities = []
    for reference in imaging.get("basedOn") or []:
        parsed = store.parse_relative_reference(reference.get("reference") or "")
        if parsed is None or parsed[0] != "ServiceRequest":
            continue
        try:
            order = store.read_resource("ServiceRequest", parsed[1]).as_dict()
        except FhirError:
            continue
        if order.get("priority"):
            priorities.append(order["priority"])
    return min(priorities, key=lambda p: PRIORITY_RANK.get(p, 9)) if priorities else ""


def person_name(value: str) -> str:
    """A DICOM PN (`Family^Given^Middle^Prefix^Suffix`) as "Family, Given Middle"."""
    alphabetic = (value or "").split("=")[0]
    parts = [p.strip() for p in alphabetic.split("^")]
    family = parts[0] if parts else ""
    given = " ".join(p for p in parts[1:3] if p)
    if family and given:
        return f"{family}, {given}"
    return family or given


def dicom_date(value: str) -> str:
    value = (value or "").strip()
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return ""
