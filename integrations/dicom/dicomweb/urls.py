"""DICOMweb routes (PS3.18), mounted at /dicomweb. A trailing slash is tolerated everywhere."""

from django.urls import re_path

from integrations.dicom.dicomweb import views

UID = r"[^/]+"
STUDY = rf"studies/(?P<study>{UID})"
SERIES = rf"{STUDY}/series/(?P<series>{UID})"
INSTANCE = rf"{SERIES}/instances/(?P<instance>{UID})"
FRAMES = rf"{INSTANCE}/frames/(?P<frames>[^/]+)"

urlpatterns = [
    # STOW-RS and QIDO-RS
    re_path(r"^studies/?$", views.studies, name="dicomweb-studies"),
    re_path(r"^series/?$", views.all_series, name="dicomweb-all-series"),
    re_path(r"^instances/?$", views.all_instances, name="dicomweb-all-instances"),
    re_path(rf"^{STUDY}/series/?$", views.study_series, name="dicomweb-study-series"),
    re_path(rf"^{STUDY}/instances/?$", views.study_instances, name="dicomweb-study-instances"),
    re_path(rf"^{SERIES}/instances/?$", views.series_instances, name="dicomweb-series-instances"),
    # WADO-RS
    re_path(rf"^{STUDY}/?$", views.study_resource, name="dicomweb-study"),
    re_path(rf"^{STUDY}/metadata/?$", views.study_metadata, name="dicomweb-study-metadata"),
    re_path(rf"^{SERIES}/?$", views.series_resource, name="dicomweb-series"),
    re_path(rf"^{SERIES}/metadata/?$", views.series_metadata, name="dicomweb-series-metadata"),
    re_path(rf"^{INSTANCE}/?$", views.instance_resource, name="dicomweb-instance"),
    re_path(rf"^{INSTANCE}/metadata/?$", views.instance_metadata, name="dicomweb-instance-metadata"),
    re_path(rf"^{INSTANCE}/rendered/?$", views.instance_rendered, name="dicomweb-instance-rendered"),
    re_path(rf"^{INSTANCE}/bulkdata/(?P<tag>[^/]+)/?$", views.bulkdata_resource, name="dicomweb-bulkdata"),
    re_path(rf"^{FRAMES}/?$", views.frames_resource, name="dicomweb-frames"),
    re_path(rf"^{FRAMES}/rendered/?$", views.frame_rendered, name="dicomweb-frame-rendered"),
]
