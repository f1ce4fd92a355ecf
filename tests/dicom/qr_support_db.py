"""Database helpers for the Query/Retrieve tests: empty the DICOM index, keep study-complete
tasks that this process queues away from the shared worker queues."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from django.conf import settings

from integrations.dicom.models import DicomPatient, Instance, RemoteAE, Series, Study

# A queue no worker consumes: study-complete and ImagingStudy tasks queued by stores made in the
# test process itself land here (the Q/R tests do not test them) and are purged afterwards.
QR_TEST_TASK_QUEUE = "qr-tests-discarded"


def clear_index() -> None:
    """Delete the whole DICOM index and the remote AEs (committed)."""
    Instance.objects.all().delete()
    Series.objects.all().delete()
    Study.objects.all().delete()
    DicomPatient.objects.all().delete()
    RemoteAE.objects.all().delete()


@contextlib.contextmanager
def quiet_study_tasks() -> Iterator[None]:
    """Route the tasks queued by stores in this process to a queue nobody consumes, then purge it."""
    previous = getattr(settings, "BTT_DICOM_TASK_QUEUE", "default")
    settings.BTT_DICOM_TASK_QUEUE = QR_TEST_TASK_QUEUE
    try:
        yield
    finally:
        settings.BTT_DICOM_TASK_QUEUE = previous
        purge_discarded_tasks()


def purge_discarded_tasks() -> None:
    from btt_health.celery import app

    with contextlib.suppress(Exception), app.connection_for_write() as connection:
        connection.default_channel.queue_purge(QR_TEST_TASK_QUEUE)
