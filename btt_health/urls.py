from django.conf import settings
from django.contrib import admin
from django.urls import include, path

from btt_health import bench_views, health

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("fhir", include("integrations.fhir.urls")),
    path("dicomweb/", include("integrations.dicom.dicomweb.urls")),
    path("api/ai/", include("ai_pipeline.urls")),
    path("admin/", admin.site.urls),
]

if settings.BTT_BENCH_VIEWS:
    urlpatterns.append(path("bench/fixed", bench_views.fixed_json))
