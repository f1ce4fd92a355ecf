"""`python manage.py requeue_inference_jobs`: re-publish the tasks of stuck inference jobs now.

The same sweep the workers run (ai_pipeline/jobs.py `requeue_stuck_jobs`): jobs queued whose
message was never published or was lost, and jobs running past their time limit. Idempotent.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand

from ai_pipeline.jobs import requeue_stuck_jobs


class Command(BaseCommand):
    help = "Re-queue inference jobs whose task was never published, was lost, or ran past its time limit."

    def handle(self, *args, **options) -> None:
        result = requeue_stuck_jobs()
        for kind, ids in result.as_dict().items():
            if ids:
                self.stdout.write(f"{kind}: re-queued job(s) {', '.join(map(str, ids))}")
        self.stdout.write(f"{len(result.requeued)} job(s) re-queued")
