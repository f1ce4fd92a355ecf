"""Django settings for the BTT Health integration server.

Everything comes from the environment through the typed readers in `btt_health.env`; a bad value
stops the process at start with a message naming the variable. The README's configuration table
lists every variable read here.
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from btt_health.env import (
    env_bool,
    env_choice,
    env_int,
    env_list,
    env_optional_str,
    env_path,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent

# --- Where data lives -------------------------------------------------------------------------
BTT_DATA_DIR = env_path("BTT_DATA_DIR", BASE_DIR / "data")

# --- Network ports of the parts that `serve` runs ---------------------------------------------
BTT_HTTP_HOST = env_str("BTT_HTTP_HOST", "0.0.0.0")
BTT_HTTP_PORT = env_int("BTT_HTTP_PORT", 8000, minimum=1, maximum=65535)
BTT_HTTP_WORKERS = env_int("BTT_HTTP_WORKERS", 2, minimum=1, maximum=64)
BTT_HTTP_THREADS = env_int("BTT_HTTP_THREADS", 4, minimum=1, maximum=64)
BTT_DICOM_PORT = env_int("BTT_DICOM_PORT", 11112, minimum=1, maximum=65535)
BTT_DICOM_AET = env_str("BTT_DICOM_AET", "BTTHEALTH")
BTT_MLLP_PORT = env_int("BTT_MLLP_PORT", 2575, minimum=1, maximum=65535)
BTT_WORKER_CONCURRENCY = env_int("BTT_WORKER_CONCURRENCY", 2, minimum=1, maximum=64)
BTT_RUN_WORKER = env_bool("BTT_RUN_WORKER", True)

# --- FHIR server limits -----------------------------------------------------------------------
BTT_FHIR_BASE_URL = env_optional_str("BTT_FHIR_BASE_URL")  # external base URL when behind a proxy
BTT_FHIR_MAX_BODY_BYTES = env_int("BTT_FHIR_MAX_BODY_BYTES", 20 * 1024 * 1024, minimum=1024)
BTT_FHIR_MAX_JSON_DEPTH = env_int("BTT_FHIR_MAX_JSON_DEPTH", 64, minimum=8, maximum=1000)
BTT_FHIR_DEFAULT_COUNT = env_int("BTT_FHIR_DEFAULT_COUNT", 20, minimum=1, maximum=1000)
BTT_FHIR_MAX_COUNT = env_int("BTT_FHIR_MAX_COUNT", 1000, minimum=1, maximum=10000)
BTT_FHIR_MAX_BUNDLE_ENTRIES = env_int("BTT_FHIR_MAX_BUNDLE_ENTRIES", 10000, minimum=1)
# Mounts /bench/fixed (btt_health/bench_views.py), the ceiling benchmarks/fhir_benchmark.py compares with.
BTT_BENCH_VIEWS = env_bool("BTT_BENCH_VIEWS", False)
# Form-encoded POST _search bodies are parsed by Django, which applies its own limit.
DATA_UPLOAD_MAX_MEMORY_SIZE = BTT_FHIR_MAX_BODY_BYTES

# --- Django core ------------------------------------------------------------------------------
DEBUG = env_bool("BTT_DEBUG", False)
SECRET_KEY = env_optional_str("DJANGO_SECRET_KEY")
if SECRET_KEY is None:
    if not DEBUG and env_bool("BTT_REQUIRE_SECRET_KEY", False):
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set (BTT_REQUIRE_SECRET_KEY is on)")
    # The embedded default keeps a generated key in the data directory so sessions survive restarts.
    _key_file = BTT_DATA_DIR / "secret_key"
    if _key_file.exists():
        SECRET_KEY = _key_file.read_text().strip()
    else:
        import secrets

        BTT_DATA_DIR.mkdir(parents=True, exist_ok=True)
        SECRET_KEY = secrets.token_urlsafe(50)
        _key_file.write_text(SECRET_KEY)
        _key_file.chmod(0o600)

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["*"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "btt_health",  # the project's own management commands (serve, create_api_client) and tasks
    "btt_health.api_auth",
    "integrations.fhir",
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

ROOT_URLCONF = "btt_health.urls"
WSGI_APPLICATION = "btt_health.wsgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "btt_health" / "templates"],
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

# --- Database: PostgreSQL in production, an SQLite file under BTT_DATA_DIR by default ----------
_database_url = env_optional_str("DATABASE_URL")
if _database_url is None:
    BTT_DATA_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": BTT_DATA_DIR / "btt.sqlite3",
            "OPTIONS": {
                # WAL lets the HTTP workers read while the Celery worker writes; IMMEDIATE takes the
                # write lock at BEGIN so concurrent writers queue instead of failing mid-transaction.
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
            },
        }
    }
else:
    try:
        DATABASES = {
            "default": dj_database_url.parse(
                _database_url, conn_max_age=env_int("BTT_DB_CONN_MAX_AGE", 600, minimum=0)
            )
        }
    except Exception as exc:  # dj_database_url raises several types for a bad URL
        raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
    if DATABASES["default"]["ENGINE"] not in (
        "django.db.backends.postgresql",
        "django.db.backends.sqlite3",
    ):
        raise ImproperlyConfigured(
            f"DATABASE_URL must point at PostgreSQL or SQLite, got engine {DATABASES['default']['ENGINE']}"
        )
    # Off by default: the check costs a round trip per request. After a database restart each
    # stale pooled connection then fails one request and is replaced.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = env_bool("BTT_DB_CONN_HEALTH_CHECKS", False)
    _test_db = env_optional_str("BTT_TEST_DATABASE_NAME")
    if _test_db:
        DATABASES["default"]["TEST"] = {"NAME": _test_db}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Celery (read by btt_health/celery.py through the CELERY_ namespace) ----------------------
_broker_url = env_optional_str("CELERY_BROKER_URL")
if _broker_url is None:
    # Embedded transport: messages are files under BTT_DATA_DIR, shared by every local process.
    _broker_dir = BTT_DATA_DIR / "broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
else:
    CELERY_BROKER_URL = _broker_url
    CELERY_BROKER_TRANSPORT_OPTIONS = {}
CELERY_RESULT_BACKEND = env_optional_str("CELERY_RESULT_BACKEND")
CELERY_TASK_IGNORE_RESULT = CELERY_RESULT_BACKEND is None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_QUEUES = env_list("BTT_WORKER_QUEUES", ["default", "inference", "ledger"])

# --- Static files served by whitenoise --------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = BTT_DATA_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- Locale -----------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Logging ----------------------------------------------------------------------------------
BTT_LOG_LEVEL = env_choice("BTT_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": BTT_LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
