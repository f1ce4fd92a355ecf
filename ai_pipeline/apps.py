from django.apps import AppConfig


class AiPipelineConfig(AppConfig):
    name = "ai_pipeline"
    label = "ai_pipeline"
    verbose_name = "AI pipeline"
