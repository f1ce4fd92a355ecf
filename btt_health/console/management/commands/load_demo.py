"""`python manage.py load_demo`: demo organization, users, patients with orders, and a CT study
pushed by C-STORE to the running stack (see btt_health/console/demo.py)."""

from __future__ import annotations

import secrets
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from ai_pipeline.models import InferenceJob
from btt_health.console import demo


class Command(BaseCommand):
    help = (
        "Create a demo organization, a clinician and an admin login, three patients with orders, and send a "
        "synthetic CT study to the running DICOM node (start `manage.py serve` first); prints the logins."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--clinician-password", default=None, help="default: a new random password")
        parser.add_argument("--admin-password", default=None, help="default: a new random password")
        parser.add_argument("--host", default="127.0.0.1", help="the DICOM node's host (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=None, help="its port (default BTT_DICOM_PORT)")
        parser.add_argument("--slices", type=int, default=24, help="slices of the CT study (default 24)")
        parser.add_argument("--no-study", action="store_true", help="create the users and orders only")
        parser.add_argument(
            "--wait", type=float, default=0, metavar="SECONDS",
            help="wait up to this long for the AI report of the study (default: do not wait)",
        )  # fmt: skip

    def handle(self, *args, **options) -> None:
        clinician_password = options["clinician_password"] or secrets.token_urlsafe(12)
        admin_password = options["admin_password"] or secrets.token_urlsafe(12)
        with transaction.atomic():
            result = demo.load_organization_and_users(clinician_password, admin_password)
        self.stdout.write(
            f"organization: {result.organization.name} (FHIR Organization/{result.organization.fhir_organization_id})"
        )
        for patient, patient_id, order_id in result.patients:
            self.stdout.write(
                f"patient {patient.given} {patient.family} ({patient.patient_id}, Patient/{patient_id}), "
                f"order {patient.accession} ({patient.priority}, ServiceRequest/{order_id})"
            )
        if not options["no_study"]:
            first = demo.DEMO_PATIENTS[0]
            datasets = demo.ct_study(first, slices=options["slices"])
            port = options["port"] or settings.BTT_DICOM_PORT
            try:
                sent = demo.send_study(
                    datasets,
                    options["host"],
                    port,
                    called_aet=settings.BTT_DICOM_AET,
                    calling_aet=demo.DEMO_AE_TITLE,
                )
            except demo.StoreFailed as exc:
                raise CommandError(str(exc)) from None
            uid = str(datasets[0].StudyInstanceUID)
            self.stdout.write(
                f"CT study {uid}: {sent} images sent to {settings.BTT_DICOM_AET} at {options['host']}:{port}"
            )
            if options["wait"]:
                self._wait_for_report(uid, options["wait"])
        self.stdout.write("")
        self.stdout.write(f"clinician login: {result.clinician[0]} / {result.clinician[1]}")
        self.stdout.write(f"admin login: {result.admin[0]} / {result.admin[1]}")
        self.stdout.write(f"open http://localhost:{settings.BTT_HTTP_PORT}/ (viewer) and /admin/ (console)")

    def _wait_for_report(self, uid: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            job = InferenceJob.objects.filter(study_instance_uid=uid).order_by("-queued_at").first()
            if job is not None and job.state in (InferenceJob.State.SUCCEEDED, InferenceJob.State.FAILED):
                if job.state == InferenceJob.State.FAILED:
                    raise CommandError(f"the AI job of the demo study failed: {job.reason}")
                self.stdout.write(
                    f"AI report ready: DiagnosticReport/{job.diagnostic_report_id} (trust {job.trust_score} %)"
                )
                return
            time.sleep(0.5)
        raise CommandError(f"no AI report for the demo study after {seconds:g} s (is the worker running?)")
