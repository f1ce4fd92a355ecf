from django.urls import re_path

from integrations.fhir import views

urlpatterns = [
    re_path(r"^(?:/(?P<path>.*))?$", views.fhir_endpoint, name="fhir"),
]
