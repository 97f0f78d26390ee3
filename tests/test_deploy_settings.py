"""Deployment settings from the environment: `manage.py check --deploy` run as an operator would."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys

from tests.conftest import ROOT

SETTINGS = ["SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_HSTS_SECONDS",
            "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD", "SECURE_PROXY_SSL_HEADER", "CSRF_TRUSTED_ORIGINS"]


def production_env(site_url: str, **extra: str) -> dict[str, str]:
    """A production environment: nothing of the test run's settings leaks in."""
    env = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "DATABASE_URL", *SETTINGS}}
    env.update(DEBUG="0", SECRET_KEY=secrets.token_urlsafe(64), SITE_URL=site_url,
               ALLOWED_HOSTS="uploader.example", **extra)
    return env


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def effective(env: dict[str, str]) -> dict:
    code = f"import json; from django.conf import settings; print(json.dumps({{k: getattr(settings, k) for k in {SETTINGS!r}}}))"
    done = manage(env, "shell", "-v", "0", "-c", code)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_https_site_passes_the_deploy_check_with_no_issues():
    done = manage(production_env("https://uploader.example"), "check", "--deploy")

    assert done.returncode == 0, done.stderr
    assert "System check identified no issues (0 silenced)." in done.stdout, done.stdout + done.stderr


def test_https_site_turns_every_protection_on():
    assert effective(production_env("https://uploader.example")) == {
        "SECURE_SSL_REDIRECT": True, "SESSION_COOKIE_SECURE": True, "CSRF_COOKIE_SECURE": True,
        "SECURE_HSTS_SECONDS": 31_536_000, "SECURE_HSTS_INCLUDE_SUBDOMAINS": True, "SECURE_HSTS_PRELOAD": True,
        "SECURE_PROXY_SSL_HEADER": None, "CSRF_TRUSTED_ORIGINS": ["https://uploader.example"],
    }


def test_http_site_does_not_force_secure_cookies_so_the_demo_keeps_working():
    env = production_env("http://127.0.0.1:8000")

    assert effective(env) == {
        "SECURE_SSL_REDIRECT": False, "SESSION_COOKIE_SECURE": False, "CSRF_COOKIE_SECURE": False,
        "SECURE_HSTS_SECONDS": 0, "SECURE_HSTS_INCLUDE_SUBDOMAINS": False, "SECURE_HSTS_PRELOAD": False,
        "SECURE_PROXY_SSL_HEADER": None, "CSRF_TRUSTED_ORIGINS": ["http://127.0.0.1:8000"],
    }
    done = manage(env, "check", "--deploy")
    assert "security.W012" in done.stderr and "security.W016" in done.stderr


def test_each_setting_can_be_set_from_the_environment():
    env = production_env("https://uploader.example", SECURE_SSL_REDIRECT="0", SECURE_HSTS_SECONDS="3600",
                         SECURE_HSTS_PRELOAD="0", SECURE_PROXY_SSL_HEADER="HTTP_X_FORWARDED_PROTO,https",
                         CSRF_TRUSTED_ORIGINS="https://a.example,https://b.example")

    got = effective(env)

    assert (got["SECURE_SSL_REDIRECT"], got["SECURE_HSTS_SECONDS"], got["SECURE_HSTS_PRELOAD"]) == (False, 3600, False)
    assert got["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert got["CSRF_TRUSTED_ORIGINS"] == ["https://a.example", "https://b.example"]


def test_a_malformed_proxy_header_stops_the_start():
    done = manage(production_env("https://uploader.example", SECURE_PROXY_SSL_HEADER="HTTP_X_FORWARDED_PROTO"),
                  "check")

    assert done.returncode != 0 and "SECURE_PROXY_SSL_HEADER: expected HEADER,VALUE" in done.stderr


def test_every_setting_read_from_the_environment_is_documented():
    read = set(re.findall(r'env(?:\.\w+)?\("([A-Z][A-Z0-9_]*)"', (ROOT / "uploader_site/settings.py").read_text()))
    readme, example = (ROOT / "README.md").read_text(), (ROOT / ".env.example").read_text()

    assert read and not [name for name in sorted(read) if f"`{name}`" not in readme]
    assert not [name for name in sorted(read) if not re.search(rf"^#? ?{name}=", example, re.M)]


def test_with_redis_the_shared_cache_keys_carry_the_cluster_name_as_django_q2_keys_do():
    env = production_env("https://uploader.example", REDIS_URL="redis://127.0.0.1:6379/0", Q_CLUSTER_NAME="staging")
    code = ("import json; from django.conf import settings; "
            "print(json.dumps([settings.CACHES['default'].get('KEY_PREFIX'), settings.Q_CLUSTER['name']]))")
    done = manage(env, "shell", "-v", "0", "-c", code)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["staging", "staging"]
