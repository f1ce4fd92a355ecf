"""The AI pipeline's tables: the model registry, routing rules, inference jobs, trust weights."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from ai_pipeline.config import check_weights


class AIModel(models.Model):
    """A model found in a model folder (`registry.sync_registry`): one row per name and version.

    `status` says whether the folder can be used now: `available` (manifest valid, model.onnx
    matches its sha256), `integrity_error` (the file does not match: refused), `invalid` (the
    manifest does not validate) or `missing` (the folder is gone). Only enabled and available
    models are routed and run. `enabled` is the admin's switch and survives re-scans.
    """

    class Status(models.TextChoices):
        AVAILABLE = "available", "available"
        INTEGRITY_ERROR = "integrity_error", "sha256 mismatch (refused)"
        INVALID = "invalid", "invalid manifest"
        MISSING = "missing", "folder missing"

    name = models.CharField(max_length=64)
    version = models.CharField(max_length=32)
    sha256 = models.CharField(max_length=64, help_text="SHA-256 of model.onnx, as the manifest pins it")
    manifest = models.JSONField(default=dict)
    path = models.CharField(max_length=1024, help_text="the model folder (model.onnx and manifest.json)")
    enabled = models.BooleanField(default=True, help_text="routed and run when available")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.AVAILABLE)
    status_detail = models.TextField(blank=True, default="")
    title = models.CharField(max_length=200, blank=True, default="")
    specialty = models.CharField(max_length=64, blank=True, default="")
    clinical_use = models.BooleanField(default=False)
    registered_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    verified_at = models.DateTimeField(
        null=True, blank=True, help_text="last time model.onnx matched its sha256"
    )

    class Meta:
        verbose_name = "AI model"
        ordering = ["name", "-registered_at"]
        constraints = [models.UniqueConstraint(fields=["name", "version"], name="ai_model_name_version")]

    def __str__(self) -> str:
        return f"{self.name} {self.version}"

    @property
    def runnable(self) -> bool:
        return self.enabled and self.status == self.Status.AVAILABLE


class RoutingRule(models.Model):
    """Which model runs on which studies. Every filled-in criterion must match; blank means any.

    A study matches a criterion when any of its series/instances has the value (modality, body
    part, SOP class), when the sending AE matches, or when one of the orders (ServiceRequest codes)
    of the study's accession has the code. The model's own applicability (its manifest) must match
    too. Disabled rules, disabled models and models that are not available are never routed.
    """

    name = models.CharField(max_length=100, unique=True)
    enabled = models.BooleanField(default=True)
    model_name = models.CharField(max_length=64, help_text="the model's name (its manifest 'name')")
    model_version = models.CharField(
        max_length=32, blank=True, default="", help_text="blank: the newest enabled, available version"
    )
    modality = models.CharField(max_length=16, blank=True, default="", help_text="e.g. CT; blank: any")
    body_part = models.CharField(
        max_length=64, blank=True, default="", help_text="Body Part Examined, e.g. CHEST"
    )
    sop_class_uid = models.CharField(max_length=64, blank=True, default="")
    calling_ae = models.CharField(max_length=16, blank=True, default="", help_text="sending AE title")
    order_code = models.CharField(
        max_length=100, blank=True, default="", help_text="ServiceRequest code: 'code' or 'system|code'"
    )
    specialty = models.CharField(
        max_length=64,
        blank=True,
        default="",
        help_text="trust-score weights to use; blank: the model's specialty",
    )
    priority = models.CharField(
        max_length=10,
        blank=True,
        default="",
        choices=[("stat", "stat"), ("asap", "asap"), ("urgent", "urgent"), ("routine", "routine")],
        help_text="at least this priority for the jobs it routes (stat runs before routine); blank: the order's",
    )
    outside = models.BooleanField(
        default=False,
        help_text="the model runs on a worker outside the hospital: it gets a de-identified copy of the "
        "study (DICOM PS3.15 basic profile) and its results are re-identified",
    )
    dicom_sr = models.BooleanField(
        default=False, help_text="also write the result as a DICOM SR (TID 1500), stored in the node"
    )
    result_destinations = models.CharField(
        max_length=200,
        blank=True,
        default="",
        help_text="remote AE titles (comma-separated) the DICOM results are sent to by C-STORE",
    )
    description = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        self.modality = self.modality.strip().upper()
        self.body_part = self.body_part.strip().upper()
        self.calling_ae = self.calling_ae.strip()
        self.specialty = self.specialty.strip().lower()
        self.result_destinations = ",".join(
            ae.strip() for ae in self.result_destinations.split(",") if ae.strip()
        )
        models_named = AIModel.objects.filter(name=self.model_name)
        if not models_named.exists():
            raise ValidationError({"model_name": f"no registered model is named {self.model_name!r}"})
        if self.model_version and not models_named.filter(version=self.model_version).exists():
            raise ValidationError(
                {"model_version": f"{self.model_name} has no version {self.model_version!r}"}
            )
        if self.result_destinations and not self.dicom_sr:
            raise ValidationError({"result_destinations": "destinations need a DICOM result (tick DICOM SR)"})

    @property
    def destinations(self) -> list[str]:
        """The remote AE titles of `result_destinations`."""
        return [ae.strip() for ae in self.result_destinations.split(",") if ae.strip()]


class InferenceJob(models.Model):
    """One model run on one study: exactly one per (study, model name, model version).

    States: `queued` (waiting for a worker; also after a transient failure that will be retried),
    `running`, `succeeded` (the DiagnosticReport is written), `failed` (with `reason`; no report).
    Durations are in seconds: `queue_seconds` from queued to started, `run_seconds` from started
    to finished, and the steps of the run (load, preprocess, inference, write).
    """

    class State(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"

    class Priority(models.TextChoices):  # FHIR request-priority codes, most urgent first
        STAT = "stat", "stat"
        ASAP = "asap", "asap"
        URGENT = "urgent", "urgent"
        ROUTINE = "routine", "routine"

    PRIORITY_RANK = {"stat": 0, "asap": 1, "urgent": 2, "routine": 3}

    study_instance_uid = models.CharField(max_length=64, db_index=True)
    model = models.ForeignKey(AIModel, on_delete=models.PROTECT, related_name="jobs")
    model_name = models.CharField(max_length=64)
    model_version = models.CharField(max_length=32)
    model_sha256 = models.CharField(max_length=64, blank=True, default="")
    routing_rule = models.ForeignKey(
        RoutingRule, on_delete=models.SET_NULL, null=True, blank=True, related_name="jobs"
    )
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED, db_index=True)
    reason = models.TextField(
        blank=True, default="", help_text="why it failed (or why an attempt is retried)"
    )
    priority = models.CharField(max_length=10, choices=Priority.choices, default=Priority.ROUTINE)
    worker = models.CharField(
        max_length=255, blank=True, default="", help_text="the worker of the latest attempt"
    )
    attempts = models.PositiveIntegerField(default=0)
    event_id = models.CharField(max_length=200, blank=True, default="", help_text="the study_received event")
    accession_number = models.CharField(max_length=64, blank=True, default="")
    outside = models.BooleanField(
        default=False, help_text="runs outside the hospital on a de-identified copy (routing rule)"
    )
    queued_at = models.DateTimeField(default=timezone.now)
    published_at = models.DateTimeField(
        null=True, blank=True, help_text="when its task message was last handed to the broker"
    )
    publish_count = models.PositiveIntegerField(default=0, help_text="task messages published for it")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    queue_seconds = models.FloatField(null=True, blank=True)
    run_seconds = models.FloatField(null=True, blank=True)
    load_seconds = models.FloatField(null=True, blank=True)
    preprocess_seconds = models.FloatField(null=True, blank=True)
    inference_seconds = models.FloatField(null=True, blank=True)
    write_seconds = models.FloatField(null=True, blank=True)
    images = models.PositiveIntegerField(null=True, blank=True, help_text="images (frames) the model saw")
    providers = models.CharField(
        max_length=200, blank=True, default="", help_text="onnxruntime providers used"
    )
    trust_score = models.FloatField(null=True, blank=True, help_text="0-100 %")
    trust = models.JSONField(default=dict, blank=True, help_text="the trust score's factors and weights")
    findings = models.JSONField(default=list, blank=True)
    quality = models.JSONField(default=dict, blank=True)
    diagnostic_report_id = models.CharField(max_length=64, blank=True, default="")
    provenance_id = models.CharField(max_length=64, blank=True, default="")
    dicom_results = models.JSONField(
        default=dict, blank=True, help_text="DICOM SR written for the report and where it was sent"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "inference job"
        ordering = ["-queued_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["study_instance_uid", "model_name", "model_version"],
                name="ai_job_study_model_version",
            )
        ]
        indexes = [models.Index(fields=["state", "priority", "queued_at"], name="ai_job_queue")]

    def __str__(self) -> str:
        return f"{self.model_name} {self.model_version} on {self.study_instance_uid} ({self.state})"

    @property
    def priority_rank(self) -> int:
        """0 for stat ... 3 for routine (lower runs first)."""
        return self.PRIORITY_RANK.get(self.priority, 3)


class TrustWeights(models.Model):
    """alpha, beta, gamma of the trust score for one specialty (overrides BTT_TRUST_WEIGHTS).

    `specialty` "default" applies to specialties without their own row or setting.
    """

    specialty = models.CharField(max_length=64, unique=True)
    alpha = models.FloatField(help_text="weight of D_quality x M_confidence")
    beta = models.FloatField(help_text="weight of H_consensus x (1 - U_factor)")
    gamma = models.FloatField(help_text="weight of E_evidence")
    note = models.CharField(max_length=200, blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "trust weights"
        verbose_name_plural = "trust weights"
        ordering = ["specialty"]

    def __str__(self) -> str:
        return f"{self.specialty}: alpha {self.alpha:g}, beta {self.beta:g}, gamma {self.gamma:g}"

    def clean(self) -> None:
        self.specialty = self.specialty.strip().lower()
        try:
            check_weights(self.alpha, self.beta, self.gamma, where=self.specialty or "weights")
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


class DeidentifiedStudy(models.Model):
    """The pseudonyms of one study's de-identified copy (ai_pipeline/deidentify.py), kept so that
    results computed on the copy can be re-identified.

    `uid_map` maps every original UID that was replaced to its stand-in (2.25 UUID-derived UIDs,
    made once and reused, so the copy's UIDs stay the same across runs and consistent within the
    study). `patient_pseudonym` replaces Patient ID. Never leaves the hospital.
    """

    study_instance_uid = models.CharField(max_length=64, unique=True)
    deidentified_study_uid = models.CharField(max_length=64, unique=True)
    patient_pseudonym = models.CharField(max_length=64)
    uid_map = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "de-identified study"

    def __str__(self) -> str:
        return f"{self.study_instance_uid} -> {self.deidentified_study_uid}"

    def original_uid(self, deidentified_uid: str) -> str | None:
        """The original UID a stand-in replaced (None when it is not one of this study's)."""
        for original, stand_in in self.uid_map.items():
            if stand_in == deidentified_uid:
                return original
        return None


class OutsideDispatch(models.Model):
    """One hand-over of an outside job to a worker outside the hospital (ai_pipeline/outside.py).

    `ref` is the job's opaque id out there (a random hex string, not the job's primary key); the
    worker proves it was given the job with a token, of which only the SHA-256 is kept, valid
    until `expires_at`. `folder` holds the de-identified copy it downloads (removed when the
    result comes back or the dispatch is superseded). Only the newest dispatch of a job is
    `active`; a result is taken once (`result_at`), so a repeated post changes nothing.
    """

    job = models.ForeignKey(InferenceJob, on_delete=models.CASCADE, related_name="outside_dispatches")
    ref = models.CharField(max_length=32, unique=True)
    token_sha256 = models.CharField(max_length=64)
    expires_at = models.DateTimeField()
    folder = models.CharField(max_length=1024, help_text="the de-identified copy (BTT_DEID_DIR)")
    deidentified_study_uid = models.CharField(max_length=64)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    downloaded_at = models.DateTimeField(null=True, blank=True)
    result_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "outside dispatch"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"outside {self.ref} (job {self.job_id})"


class SweepChain(models.Model):
    """The one live chain of `ai_pipeline.sweep_inference_jobs` tasks (tasks.py): a worker that
    starts writes a new token; a sweep whose token is not the current one ends its chain."""

    name = models.CharField(max_length=32, unique=True)
    token = models.CharField(max_length=64)
    last_swept_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"sweep {self.name} ({self.token[:8]})"
