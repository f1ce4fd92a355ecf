"""`python manage.py sync_models`: scan BTT_MODEL_DIR and register the models found there."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from ai_pipeline.registry import model_dirs, sync_registry


class Command(BaseCommand):
    help = "Scan the model folders (BTT_MODEL_DIR), validate manifests and sha256, update the model registry."

    def handle(self, *args, **options) -> None:
        result = sync_registry()
        folders = ", ".join(str(folder) for folder in model_dirs())
        for model in result.registered:
            state = "enabled" if model.enabled else "disabled"
            self.stdout.write(f"available  {model.name} {model.version} ({state}) {model.path}")
        for model in result.missing:
            self.stdout.write(f"missing    {model.name} {model.version}: {model.status_detail}")
        for folder, reason in result.refused:
            self.stderr.write(f"refused    {folder}: {reason}")
        self.stdout.write(
            f"{len(result.registered)} available, {len(result.refused)} refused, {len(result.missing)} missing (searched {folders})"
        )
        if result.refused:
            raise CommandError(f"{len(result.refused)} model folder(s) refused")
