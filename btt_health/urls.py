from django.conf import settings
from django.contrib import admin
from django.urls import include, path

from btt_health import bench_views, health
from btt_health.console import admin as console_admin

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("fhir", include("integrations.fhir.urls")),
    path("dicomweb/", include("integrations.dicom.dicomweb.urls")),
    path("api/ai/", include("ai_pipeline.urls")),
    path("admin/status", admin.site.admin_view(console_admin.status_view), name="admin-status"),
    path("admin/", admin.site.urls),
    path("", include("btt_health.console.urls")),  # the clinician viewer (login, worklist, studies)
]

if settings.BTT_BENCH_VIEWS:
    urlpatterns.append(path("bench/fixed", bench_views.fixed_json))
