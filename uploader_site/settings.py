"""Settings, read from the environment through django-environ (see .env.example)."""

import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)
if DEBUG:
    SECRET_KEY = env("SECRET_KEY", default="insecure-development-key-do-not-use-in-production")
else:
    SECRET_KEY = env("SECRET_KEY")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1"])
SITE_URL = env("SITE_URL", default="http://127.0.0.1:8000")

# Deployment security (SECURITY.md). An https SITE_URL means the site is served only over TLS:
# secure cookies, the redirect to https and HSTS follow, each overridable. Over http (the
# embedded demo on 127.0.0.1) they stay off, or browsers would drop the session cookie.
_site = urlsplit(SITE_URL)
_https = _site.scheme == "https"
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=_https)
# A Prometheus on this host scrapes http://127.0.0.1/metrics; a redirect to https would lose it.
SECURE_REDIRECT_EXEMPT = [r"^metrics$"]
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=_https)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=_https)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31_536_000 if _https else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=_https)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=_https)
# Behind a proxy that terminates TLS: the header it sets and the value meaning https, e.g.
# HTTP_X_FORWARDED_PROTO,https. Without it such a proxy's requests look like http and
# SECURE_SSL_REDIRECT would redirect them forever.
SECURE_PROXY_SSL_HEADER = tuple(env.list("SECURE_PROXY_SSL_HEADER", default=[])) or None
if SECURE_PROXY_SSL_HEADER is not None and len(SECURE_PROXY_SSL_HEADER) != 2:
    raise ImproperlyConfigured("SECURE_PROXY_SSL_HEADER: expected HEADER,VALUE, e.g. HTTP_X_FORWARDED_PROTO,https")
# Our own origin is always trusted, so forms work behind a proxy that calls us by another name.
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[f"{_site.scheme}://{_site.netloc}"])
# Admin login throttling: after LOGIN_FAILURE_LIMIT failures for one username from one address
# within LOGIN_FAILURE_WINDOW_SECONDS, that pair is refused for LOGIN_COOLOFF_SECONDS.
LOGIN_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
LOGIN_FAILURE_WINDOW_SECONDS = env.int("LOGIN_FAILURE_WINDOW_SECONDS", default=900)
LOGIN_COOLOFF_SECONDS = env.int("LOGIN_COOLOFF_SECONDS", default=900)
if LOGIN_FAILURE_LIMIT < 1:
    raise ImproperlyConfigured("LOGIN_FAILURE_LIMIT: at least 1")
# The request header (META name) holding the client's address when a proxy sits in front,
# e.g. HTTP_X_FORWARDED_FOR (its last entry, the one the proxy added); empty: REMOTE_ADDR.
LOGIN_CLIENT_IP_HEADER = env("LOGIN_CLIENT_IP_HEADER", default="")

DATA_DIR = Path(env("DATA_DIR", default=str(BASE_DIR / "data")))

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_q",
    "projects",
    "sessions_app",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "uploader_site.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "uploader_site.wsgi.application"

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'uploader.sqlite3'}"),
}
_db = DATABASES["default"]
if _db["ENGINE"].endswith("sqlite3"):
    # WAL lets the web server read while qcluster workers write; the timeout rides out write bursts.
    # IMMEDIATE: a transaction that reads then writes (claims, the broker's dequeue, cache sets)
    # takes the write lock first and waits for it; started as a reader, it fails at once with
    # "database is locked" when another process wrote in between.
    _db.setdefault("OPTIONS", {}).update(
        {"timeout": 30, "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
         "transaction_mode": "IMMEDIATE"}
    )
else:
    # The ORM broker polls and acks through the database: without persistent connections
    # every broker operation pays a fresh connect (~14 ms on PostgreSQL).
    _db["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=600)
    _db["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env("STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

REDIS_URL = env("REDIS_URL", default="")
Q_WORKERS = env.int("Q_WORKERS", default=4)
Q_CLUSTER = {
    "name": env("Q_CLUSTER_NAME", default="uploader"),
    "workers": Q_WORKERS,
    # Upload tasks hand over to a successor well before this (UPLOAD_TASK_SECONDS), so the
    # timeout only fires for a truly stuck task; retry must exceed it or the ORM broker
    # would redeliver a task that is still running.
    "timeout": env.int("Q_TIMEOUT", default=3600),
    "retry": env.int("Q_RETRY", default=4000),
    "max_attempts": 3,
    "ack_failures": True,
    "catch_up": False,
    "save_limit": 1000,
    "poll": env.float("Q_POLL", default=0.2),
    "label": "Django Q2",
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

# django-q2 keeps each cluster's heartbeat (its Stat) in this cache: it must be shared by every
# process, or the web server could never tell whether a qcluster is alive (LocMem is per process).
# The database needs no extra service and works across machines; Redis when we have it.
# Its keys are prefixed with the cluster's name, as django-q2's own Redis keys are: deployments that
# share one Redis under different Q_CLUSTER_NAMEs do not see each other's keys.
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL,
                          "KEY_PREFIX": Q_CLUSTER["name"]}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "uploader_cache"}}

# Pipeline tuning.
# Rows per insert transaction. PostgreSQL: fewer, larger transactions (each costs round trips);
# SQLite, where a statement is no round trip, sent small files sooner with 5,000 (bench_resync).
SCAN_BATCH_SIZE = env.int("SCAN_BATCH_SIZE", default=5000 if _db["ENGINE"].endswith("sqlite3") else 40000)
SCAN_PROGRESS_EVERY = env.int("SCAN_PROGRESS_EVERY", default=10000)
SCAN_METHOD = env("SCAN_METHOD", default="auto")  # auto | find | scandir
UPLOAD_CHUNK_SIZE = env.int("UPLOAD_CHUNK_SIZE", default=200)
UPLOAD_TASK_SECONDS = env.float("UPLOAD_TASK_SECONDS", default=300)
UPLOAD_FLUSH_SECONDS = env.float("UPLOAD_FLUSH_SECONDS", default=1.0)
UPLOAD_RETRY_BASE_SECONDS = env.float("UPLOAD_RETRY_BASE_SECONDS", default=0.5)
UPLOAD_RETRY_CAP_SECONDS = env.float("UPLOAD_RETRY_CAP_SECONDS", default=30)
# A running scan or upload task renews its lease on its session and on the files it claimed every
# LEASE_SECONDS / 3; what a lease no longer covers (the task was killed) is taken back by the sweep,
# which also runs when a cluster starts.
LEASE_SECONDS = env.int("LEASE_SECONDS", default=30)
# A session no task has taken up yet (its tasks wait in the broker) is resumed after this long.
SESSION_STALE_SECONDS = env.int("SESSION_STALE_SECONDS", default=300)
# Upload queue: a producer queues another drainer task only when none has shown life for this long;
# an idle drainer keeps polling for new files this long before it ends.
QUEUE_WAKE_SECONDS = env.float("QUEUE_WAKE_SECONDS", default=60)
QUEUE_LINGER_SECONDS = env.float("QUEUE_LINGER_SECONDS", default=5)
# Browser uploads (tus): bytes are staged here until processed and sent on; thumbnails kept for the admin.
UPLOAD_STAGING_DIR = Path(env("UPLOAD_STAGING_DIR", default=str(DATA_DIR / "staging")))
THUMBNAIL_DIR = Path(env("THUMBNAIL_DIR", default=str(DATA_DIR / "thumbnails")))
UPLOAD_MAX_FILE_BYTES = env.int("UPLOAD_MAX_FILE_BYTES", default=50 * 1024**3)
# An upload with no byte received for this long expires: its staged bytes go, its file fails.
UPLOAD_EXPIRE_SECONDS = env.int("UPLOAD_EXPIRE_SECONDS", default=24 * 3600)
UPLOAD_MANIFEST_MAX_FILES = env.int("UPLOAD_MANIFEST_MAX_FILES", default=100_000)
# How often the sweep re-checks that each SFTP destination answers.
HEALTH_CHECK_SECONDS = env.int("HEALTH_CHECK_SECONDS", default=300)

# /metrics off loopback needs `Authorization: Bearer <METRICS_TOKEN>`; unset, only loopback may scrape.
METRICS_TOKEN = env("METRICS_TOKEN", default="")

# plain: one line of text per message; json: one JSON object per line, with session and project ids.
LOG_FORMAT = env("LOG_FORMAT", default="plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be plain or json, not {LOG_FORMAT!r}")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # Messages carry file names and remote answers: control characters are shown escaped.
    "formatters": {"plain": {"()": "sessions_app.terminal.SafeFormatter",
                             "format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
                   "json": {"()": "sessions_app.logcontext.JsonFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {
        "botocore": {"level": "WARNING"},
        "boto3": {"level": "WARNING"},
        "urllib3": {"level": "WARNING"},
        "paramiko": {"level": "WARNING"},
        # The roboflow SDK's prints, captured: chatter, not news.
        "projects.destinations.roboflow.sdk": {"level": "WARNING"},
    },
}

# Test databases: one per test process, so concurrent runs on one machine never share one;
# for SQLite a file, not :memory:, so a qcluster subprocess in the tests sees it.
_test_suffix = f"{os.getpid()}"
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"]["TEST"] = {"NAME": os.path.join(tempfile.gettempdir(), f"uploader-test-{_test_suffix}.sqlite3")}
else:
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{_test_suffix}"}

# Notifications: attempts per notification and the backoff between them (seconds).
NOTIFY_ATTEMPTS = env.int("NOTIFY_ATTEMPTS", default=4)
NOTIFY_RETRY_BASE_SECONDS = env.float("NOTIFY_RETRY_BASE_SECONDS", default=1.0)
NOTIFY_RETRY_CAP_SECONDS = env.float("NOTIFY_RETRY_CAP_SECONDS", default=30.0)
# Networks (CIDRs) notifications may reach besides public addresses, e.g. "10.0.0.0/8,127.0.0.0/8".
NOTIFY_ALLOWED_NETWORKS = env.list("NOTIFY_ALLOWED_NETWORKS", default=[])

# Secret references (projects/secrets.py, README "Secret references"): the environment variables
# a project may name as its secrets, and the folders its key_file and known_hosts may be in
# (`~` is the home of the user running the process: the workers' for uploads).
SECRET_ENV_PREFIXES = env.list("SECRET_ENV_PREFIXES", default=["UPLOADER_SECRET_"])
SECRET_ENV_ALLOWED = env.list("SECRET_ENV_ALLOWED", default=[])  # extra names; NAME_* for a prefix
KEY_FILE_DIRS = env.list("KEY_FILE_DIRS", default=["~/.ssh", str(DATA_DIR / "keys")])
