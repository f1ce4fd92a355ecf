from django.apps import AppConfig


class DicomConfig(AppConfig):
    name = "integrations.dicom"
    label = "dicom"
    verbose_name = "DICOM node"
