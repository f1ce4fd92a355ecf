"""The clinician viewer's URLs, mounted at the site root (btt_health/urls.py)."""

from django.contrib.auth import views as auth_views
from django.urls import path

from btt_health.console import views

app_name = "console"

urlpatterns = [
    path("", views.worklist_page, name="worklist"),
    path(
        "login",
        auth_views.LoginView.as_view(template_name="console/login.html", redirect_authenticated_user=True),
        name="login",
    ),
    path("logout", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "password",
        auth_views.PasswordChangeView.as_view(
            template_name="console/password_change.html", success_url="/password/done"
        ),
        name="password_change",
    ),
    path(
        "password/done",
        auth_views.PasswordChangeDoneView.as_view(template_name="console/password_change_done.html"),
        name="password_change_done",
    ),
    path("studies/<str:study_uid>", views.study_page, name="study"),
    path("reports/<str:report_id>/sign", views.sign, name="sign"),
    path("reports/<str:report_id>/amend", views.amend, name="amend"),
    path("viewer/api/worklist", views.worklist_api, name="worklist-api"),
    path("viewer/api/studies/<str:study_uid>", views.study_api, name="study-api"),
    path(
        "viewer/images/<str:study_uid>/<str:series_uid>/<str:sop_uid>/frames/<int:frame>/rendered",
        views.rendered_frame,
        name="rendered-frame",
    ),
]
