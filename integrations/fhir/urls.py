from django.urls import path

from integrations.fhir import views

urlpatterns = [
    path("/metadata", views.metadata, name="fhir-metadata"),
]
