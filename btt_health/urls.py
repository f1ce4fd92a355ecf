from django.contrib import admin
from django.urls import include, path

from btt_health import health

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("fhir", include("integrations.fhir.urls")),
    path("admin/", admin.site.urls),
]
