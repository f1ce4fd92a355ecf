"""Logging in and out, changing the password, and CSRF protection, in headless Chromium against the
running stack (`live_stack`: `manage.py serve` on the PostgreSQL test database)."""

from __future__ import annotations

import re

import pytest
import requests

from btt_health.console import accounts
from tests.console.conftest import login
from tests.console.support import PASSWORD, make_user

pytestmark = pytest.mark.django_db(transaction=True)


def test_login_wrong_password_logout_and_password_change(live_stack, new_page, screenshot) -> None:
    hospital = accounts.create_organization("Login Hospital")
    make_user("lena.login", "clinician", hospital)
    page = new_page()

    page.goto(f"{live_stack}/studies/1.2.3")
    assert re.search(r"/login\?next=/studies/1\.2\.3$", page.url)
    page.get_by_label("User name").fill("lena.login")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Log in").click()
    assert "did not match" in page.get_by_role("alert").inner_text()
    screenshot(page, "login-failed")

    login(page, live_stack, "lena.login", PASSWORD)
    assert page.get_by_test_id("current-user").inner_text() == "Lena Tester"
    assert "Clinician · Login Hospital" in page.locator(".who").inner_text()
    assert page.get_by_role("link", name="Admin console").count() == 0  # clinicians are not staff
    screenshot(page, "logged-in")

    # Password change, then log out (a POST with the CSRF token) and in again with the new password.
    page.get_by_role("link", name="Change password").click()
    page.get_by_label("Old password").fill(PASSWORD)
    page.get_by_label("New password", exact=True).fill("An0ther-long-passphrase")
    page.get_by_label("New password confirmation").fill("An0ther-long-passphrase")
    screenshot(page, "password-change")
    page.get_by_role("button", name="Change password").click()
    page.wait_for_url(re.compile(r".*/password/done$"))
    assert "Your password was changed" in page.inner_text("main")
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(re.compile(r".*/login$"))
    page.goto(f"{live_stack}/")
    assert "/login" in page.url  # the session is gone
    login(page, live_stack, "lena.login", "An0ther-long-passphrase")
    assert page.get_by_test_id("current-user").is_visible()


def test_posts_without_the_csrf_token_are_refused(live_stack) -> None:
    hospital = accounts.create_organization("Csrf Hospital")
    make_user("carl.csrf", "clinician", hospital)
    session = requests.Session()
    session.get(f"{live_stack}/login", timeout=30)
    assert "csrftoken" in session.cookies
    # The login form without its token: refused, not logged in.
    refused = session.post(
        f"{live_stack}/login",
        data={"username": "carl.csrf", "password": PASSWORD},
        timeout=30,
        allow_redirects=False,
    )
    assert refused.status_code == 403
    assert "sessionid" not in session.cookies
    # With the token it works; a sign-off POST without the token is refused all the same.
    token = session.cookies["csrftoken"]
    ok = session.post(
        f"{live_stack}/login",
        data={"username": "carl.csrf", "password": PASSWORD, "csrfmiddlewaretoken": token},
        timeout=30,
        allow_redirects=False,
    )
    assert ok.status_code == 302
    assert "sessionid" in session.cookies
    sign = session.post(
        f"{live_stack}/reports/any-id/sign", data={"conclusion": "x"}, timeout=30, allow_redirects=False
    )
    assert sign.status_code == 403
    # Logging out is a POST (a link or image cannot log a user out).
    assert session.get(f"{live_stack}/logout", timeout=30).status_code == 405
