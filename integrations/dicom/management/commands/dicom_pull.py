"""`python manage.py dicom_pull AET ...`: query a remote PACS and pull studies from it.

dicom_pull PACS --echo                                   C-ECHO
dicom_pull PACS --find [--level STUDY] [-k PatientID=12*] ...   C-FIND, one line per match
dicom_pull PACS --study UID [--method move|get]          pull a study into this node
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from integrations.dicom import scu
from integrations.dicom.models import RemoteAE

DEFAULT_KEYS = {
    "PATIENT": ["PatientID", "PatientName", "PatientBirthDate", "NumberOfPatientRelatedStudies"],
    "STUDY": [
        "StudyInstanceUID",
        "PatientID",
        "PatientName",
        "StudyDate",
        "AccessionNumber",
        "ModalitiesInStudy",
        "StudyDescription",
        "NumberOfStudyRelatedInstances",
    ],
    "SERIES": [
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "NumberOfSeriesRelatedInstances",
    ],
    "IMAGE": ["SOPInstanceUID", "SOPClassUID", "InstanceNumber"],
}


def _show(ds: Dataset, keys: list[str]) -> str:
    parts = []
    for keyword in keys:
        value = ds.get(keyword, "")
        if value is None:
            value = ""
        if isinstance(value, MultiValue | list | tuple):
            value = "\\".join(str(v) for v in value)
        parts.append(f"{keyword}={value}")
    return "  ".join(parts)


class Command(BaseCommand):
    help = (
        "Talk to the remote AE AET (configured with add_dicom_peer) as a DICOM SCU: --echo checks the "
        "connection; --find queries it (C-FIND, Study Root; Patient Root at PATIENT level) with -k "
        "Keyword=value match keys (wildcards *, ?, ranges 20240101-20241231, lists a\\b) and prints one "
        "line per match; --study UID pulls that study into this node, with C-MOVE to this node "
        "(the PACS must know BTT_DICOM_AET, host and port; the node's SCP must run) or --method get."
    )

    def add_arguments(self, parser):
        parser.add_argument("ae_title", metavar="AET", help="AE title of the remote AE.")
        action = parser.add_mutually_exclusive_group(required=True)
        action.add_argument("--echo", action="store_true", help="C-ECHO the remote AE.")
        action.add_argument("--find", action="store_true", help="Query the remote AE (C-FIND).")
        action.add_argument("--study", metavar="UID", help="Pull this study (C-MOVE to this node, or C-GET).")
        parser.add_argument(
            "--level", default="STUDY", choices=sorted(DEFAULT_KEYS), help="Query level of --find (STUDY)."
        )
        parser.add_argument(
            "-k",
            "--key",
            action="append",
            default=[],
            metavar="KEYWORD=VALUE",
            help="A match or return key of --find (repeatable); KEYWORD alone asks for its value.",
        )
        parser.add_argument(
            "--method",
            default="move",
            choices=["move", "get"],
            help="How --study pulls: move (default) or get.",
        )

    def handle(self, *args, ae_title: str, echo: bool, find: bool, study: str | None, **options):
        try:
            remote = scu.resolve_remote(ae_title)
        except RemoteAE.DoesNotExist:
            raise CommandError(f"no remote AE {ae_title!r}: add it with add_dicom_peer") from None
        try:
            if echo:
                scu.echo(remote)
                self.stdout.write(f"C-ECHO {remote}: success")
            elif find:
                self._find(remote, options["level"], options["key"])
            else:
                self._pull(remote, study, options["method"])
        except scu.ScuError as exc:
            raise CommandError(str(exc)) from None

    def _find(self, remote: RemoteAE, level: str, keys: list[str]) -> None:
        query: dict[str, str] = {}
        for key in keys:
            keyword, _, value = key.partition("=")
            query[keyword.strip()] = value
        for keyword in DEFAULT_KEYS[level]:
            query.setdefault(keyword, "")
        try:
            matches = scu.find(remote, level, query)
        except (AttributeError, ValueError, TypeError) as exc:
            raise CommandError(f"bad key: {exc}") from None
        for ds in matches:
            self.stdout.write(_show(ds, list(query)))
        self.stdout.write(f"{len(matches)} match(es) at {level} level from {remote}")

    def _pull(self, remote: RemoteAE, study: str, method: str) -> None:
        result = scu.move(remote, study) if method == "move" else scu.get(remote, study)
        self.stdout.write(
            f"C-{method.upper()} study {study} from {remote}: {result.completed} completed, "
            f"{result.failed} failed, {result.warning} warning"
        )
        if result.failed_sop_instance_uids:
            self.stderr.write("failed: " + " ".join(result.failed_sop_instance_uids))
        if result.failed:
            raise CommandError(f"{result.failed} instance(s) of study {study} not retrieved")
