"""The admin login refuses a username+address pair after too many failed attempts."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.polling import wait_for
from uploader_site.throttling import LoginThrottle

URL = "/admin/login/"
PASSWORD = "right-password-123"
REFUSED = "Too many failed login attempts for this username from your address."


@pytest.fixture(autouse=True)
def fast_hashing(settings):
    # Every attempt hashes a password; the production hasher's cost is not what is tested here.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def admin_user(django_user_model):
    return django_user_model.objects.create_superuser("boss", "boss@example.com", PASSWORD)


def login(client: Client, password: str, username: str = "boss", **meta: str):
    return client.post(URL, {"username": username, "password": password, "next": "/admin/"}, **meta)


def logged_in(response) -> bool:
    return response.status_code == 302 and response["Location"] == "/admin/"


def fail(client: Client, times: int, **kwargs) -> None:
    for _ in range(times):
        r = login(client, "wrong", **kwargs)
        assert r.status_code == 200 and "Please enter the correct username and password" in r.text


def test_after_five_failures_even_the_right_password_is_refused(client, admin_user):
    fail(client, 5)

    r = login(client, PASSWORD)

    assert r.status_code == 200 and REFUSED in r.text and "Try again in 15 minutes." in r.text
    assert "_auth_user_id" not in client.session


def test_a_success_clears_the_failures(client, admin_user):
    fail(client, 4)
    assert logged_in(login(client, PASSWORD))
    client.logout()

    fail(client, 4)

    assert logged_in(login(client, PASSWORD))


def test_other_addresses_and_usernames_are_not_refused(client, admin_user, django_user_model):
    django_user_model.objects.create_superuser("deputy", "deputy@example.com", PASSWORD)
    fail(client, 5)

    assert logged_in(login(Client(), PASSWORD, REMOTE_ADDR="127.0.0.2"))
    assert logged_in(login(Client(), PASSWORD, username="deputy"))
    assert REFUSED in login(Client(), PASSWORD).text


def test_unknown_usernames_are_counted_and_refused_alike(client, db):
    fail(client, 5, username="nobody")

    assert REFUSED in login(client, "anything", username="nobody").text


def test_a_missing_password_neither_counts_nor_clears(client, admin_user):
    fail(client, 4)
    login(client, "")

    fail(client, 1)

    assert REFUSED in login(client, PASSWORD).text


def test_the_refusal_lifts_after_the_cooloff(client, admin_user, settings):
    # Long enough for five failed logins and the refused one on a loaded machine (a second was not).
    settings.LOGIN_COOLOFF_SECONDS = 4
    fail(client, 5)
    assert REFUSED in login(client, PASSWORD).text

    wait_for(lambda: logged_in(login(client, PASSWORD)), timeout=15, what="the cool-off to end")


def test_failures_older_than_the_window_do_not_count(client, admin_user, settings):
    settings.LOGIN_FAILURE_WINDOW_SECONDS = 1
    fail(client, 4)
    wait_for(lambda: LoginThrottle("boss", "127.0.0.1").failures() == 0, timeout=15, what="failures to expire")

    fail(client, 4)

    assert logged_in(login(client, PASSWORD))


def test_behind_a_proxy_the_address_comes_from_the_configured_header(client, admin_user, settings):
    settings.LOGIN_CLIENT_IP_HEADER = "HTTP_X_FORWARDED_FOR"
    fail(client, 5, HTTP_X_FORWARDED_FOR="spoofed, 127.0.0.5")

    assert REFUSED in login(client, PASSWORD, HTTP_X_FORWARDED_FOR="127.0.0.5").text
    assert logged_in(login(Client(), PASSWORD, HTTP_X_FORWARDED_FOR="127.0.0.6"))
