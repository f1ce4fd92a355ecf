from django.apps import AppConfig


class AiPipelineConfig(AppConfig):
    name = "ai_pipeline"
    label = "ai_pipeline"
    verbose_name = "AI pipeline"

    def ready(self) -> None:
        from ai_pipeline.subscribers import on_study_received
        from btt_health.events import STUDY_RECEIVED, subscribe

        subscribe(STUDY_RECEIVED, on_study_received)
