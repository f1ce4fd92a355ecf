"""`python manage.py dicom_send AET --study UID` (or `--instance UID ...`): C-STORE to a remote AE."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from integrations.dicom import scu
from integrations.dicom.models import RemoteAE


class Command(BaseCommand):
    help = (
        "Send stored instances to the remote AE AET (configured with add_dicom_peer) with C-STORE, "
        "as stored: a whole study (--study) or single instances (--instance, repeatable). Sends now "
        "and reports what the peer refused (exit code 1 when anything failed), or with --queue hands "
        "the sending to a Celery worker, which retries with backoff while the peer is unreachable."
    )

    def add_arguments(self, parser):
        parser.add_argument("ae_title", metavar="AET", help="AE title of the remote AE to send to.")
        parser.add_argument("--study", metavar="UID", help="Study Instance UID of a study to send.")
        parser.add_argument(
            "--instance",
            metavar="UID",
            action="append",
            default=[],
            help="SOP Instance UID to send (repeatable).",
        )
        parser.add_argument(
            "--queue",
            action="store_true",
            help="Queue the sending as a Celery task (retried) instead of sending now.",
        )

    def handle(self, *args, ae_title: str, study: str | None, instance: list[str], queue: bool, **options):
        if not study and not instance:
            raise CommandError("name what to send: --study UID and/or --instance UID")
        try:
            remote = scu.resolve_remote(ae_title)
        except RemoteAE.DoesNotExist:
            raise CommandError(f"no remote AE {ae_title!r}: add it with add_dicom_peer") from None
        if queue:
            from integrations.dicom.tasks_scu import store_to_remote

            result = store_to_remote.apply_async(
                args=[remote.ae_title],
                kwargs={"sop_instance_uids": instance or None, "study_instance_uid": study},
            )
            self.stdout.write(f"Queued sending to {remote} as task {result.id}")
            return
        try:
            outcome = scu.store(remote, sop_uids=instance or None, study_uid=study)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        except scu.ScuError as exc:
            raise CommandError(f"sending to {remote} failed: {exc}") from None
        for uid, (status, reason) in outcome.failed.items():
            code = "not sent" if status is None else f"0x{status:04X}"
            self.stderr.write(f"{uid}: {code} {reason}".rstrip())
        self.stdout.write(f"Sent {len(outcome.sent)} instance(s) to {remote}, {len(outcome.failed)} failed")
        if outcome.failed:
            raise CommandError(f"{len(outcome.failed)} instance(s) not stored by {remote.ae_title}")
