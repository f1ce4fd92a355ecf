"""`python manage.py dicom_storage_check`: compare the DICOM instance storage with the index."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from integrations.dicom import services


class Command(BaseCommand):
    help = (
        "Report stored DICOM files that no index row names (left by a crash between placing a file "
        "and committing its row) and index rows whose file is gone; --remove-orphans deletes the "
        "former. Exits 1 when index rows lack their file."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--remove-orphans", action="store_true", help="Delete the files no index row names."
        )
        parser.add_argument(
            "--min-age",
            type=float,
            default=3600.0,
            help="Only files older than this many seconds count as orphans (3600): never one being stored.",
        )

    def handle(self, *args, remove_orphans: bool, min_age: float, **options):
        report = services.check_storage(remove_orphans=remove_orphans, min_age_seconds=min_age)
        for key in report.orphans:
            self.stdout.write(f"orphan file: {key}{' (removed)' if remove_orphans else ''}")
        for uid in report.missing:
            self.stdout.write(f"missing file: instance {uid}")
        self.stdout.write(
            f"{report.files} file(s) checked: {len(report.orphans)} orphan(s)"
            f"{f', {report.removed} removed' if remove_orphans else ''}, "
            f"{len(report.missing)} indexed instance(s) without a file"
        )
        if report.missing:
            raise SystemExit(1)
