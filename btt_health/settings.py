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
    env_float,
    env_int,
    env_list,
    env_optional_str,
    env_path,
    env_str,
    env_tls_files,
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

# --- DICOM node: SCP, instance storage, peers, TLS --------------------------------------------
# (integrations/dicom/scp.py, scp_store.py, services.py, storage.py, tls.py; the README's DICOM section)
# BTT_DICOM_PORT and BTT_DICOM_AET are read above with the other ports.
if (
    not 1 <= len(BTT_DICOM_AET) <= 16
    or "\\" in BTT_DICOM_AET
    or any(ord(c) < 32 or ord(c) > 126 for c in BTT_DICOM_AET)
):
    raise ImproperlyConfigured(
        f"BTT_DICOM_AET must be 1-16 printable ASCII characters without a backslash, got {BTT_DICOM_AET!r}"
    )
BTT_DICOM_HOST = env_str("BTT_DICOM_HOST", "0.0.0.0")
BTT_RUN_DICOM = env_bool("BTT_RUN_DICOM", True)  # whether `serve` runs the DICOM SCP
BTT_DICOM_STORAGE = env_choice("BTT_DICOM_STORAGE", "filesystem", ("filesystem",))
BTT_DICOM_STORAGE_DIR = env_path("BTT_DICOM_STORAGE_DIR", BTT_DATA_DIR / "dicom")
BTT_DICOM_DUPLICATE_POLICY = env_choice("BTT_DICOM_DUPLICATE_POLICY", "keep", ("keep", "replace"))
# Largest PDU this node receives (the maximum length it offers in association negotiation); a
# peer sending a bigger one is aborted.
BTT_DICOM_MAX_PDU = env_int("BTT_DICOM_MAX_PDU", 131072, minimum=4096, maximum=16 * 1024 * 1024)
# Seconds a peer may stay silent (ACSE, DIMSE and network timeouts) before it is dropped.
BTT_DICOM_TIMEOUT = env_float("BTT_DICOM_TIMEOUT", 30.0, minimum=1.0)
BTT_DICOM_MAX_ASSOCIATIONS = env_int("BTT_DICOM_MAX_ASSOCIATIONS", 32, minimum=1, maximum=1000)
# SCP processes sharing the DICOM listening sockets (`dicom_scp`, `serve`): one Python process
# uses one CPU, so concurrent associations want one per core (with PostgreSQL; SQLite serialises
# writers anyway). BTT_DICOM_MAX_ASSOCIATIONS is shared out among them.
BTT_DICOM_PROCESSES = env_int("BTT_DICOM_PROCESSES", 1, minimum=1, maximum=64)
# Accept associations from calling AE titles that are not a configured remote AE (add_dicom_peer).
BTT_DICOM_ALLOW_UNKNOWN_AE = env_bool("BTT_DICOM_ALLOW_UNKNOWN_AE", True)
# Reject associations whose called AE title is not BTT_DICOM_AET.
BTT_DICOM_CHECK_CALLED_AET = env_bool("BTT_DICOM_CHECK_CALLED_AET", False)
# DICOM TLS: a second listener on BTT_DICOM_TLS_PORT when certificate and key are both set;
# with a CA, peers must present a certificate it signed (and the SCU verifies servers with it).
BTT_DICOM_TLS_CERT, BTT_DICOM_TLS_KEY, BTT_DICOM_TLS_CA = env_tls_files("BTT_DICOM")
BTT_DICOM_TLS_PORT = env_int("BTT_DICOM_TLS_PORT", 2762, minimum=1, maximum=65535)
# DICOMweb (integrations/dicom/dicomweb): the most QIDO-RS results one request returns, and the
# base URL written into retrieve URLs (from the request when unset; set it behind a proxy).
BTT_DICOMWEB_MAX_RESULTS = env_int("BTT_DICOMWEB_MAX_RESULTS", 5000, minimum=1, maximum=100000)
BTT_DICOMWEB_BASE_URL = env_optional_str("BTT_DICOMWEB_BASE_URL")

# --- DICOM: study-complete detection and FHIR ImagingStudy upkeep -----------------------------
# (integrations/dicom/study_complete.py, imaging_study.py, tasks.py; docs/architecture.md)
# A study is complete when none of its instances arrived for this long, over any associations.
BTT_DICOM_STUDY_QUIET_SECONDS = env_float("BTT_DICOM_STUDY_QUIET_SECONDS", 5.0, minimum=0.5)
# While a study is being received its ImagingStudy is rewritten at most this often (and always
# at completion), so a 300-slice CT makes a handful of FHIR versions, not 300.
BTT_DICOM_IMAGING_STUDY_REFRESH_SECONDS = env_float(
    "BTT_DICOM_IMAGING_STUDY_REFRESH_SECONDS", 2.0, minimum=0.1
)
# Identifier system of Patient IDs that come without an issuer (0010,0021): the hospital's MRN
# system, the one its EHR (and the HL7 v2 mapping) uses, so DICOM and EHR patients match.
BTT_DICOM_PATIENT_ID_SYSTEM = env_str("BTT_DICOM_PATIENT_ID_SYSTEM", "urn:btt-health:patient-id")
# Identifier system of accession numbers without an Issuer of Accession Number; unset: none.
BTT_DICOM_ACCESSION_SYSTEM = env_optional_str("BTT_DICOM_ACCESSION_SYSTEM")
# Zone of DICOM dates and times that carry no Timezone Offset From UTC (0008,0201).
BTT_DICOM_TIME_ZONE = env_str("BTT_DICOM_TIME_ZONE", "UTC")
# Celery queue of the study-complete checks and ImagingStudy refreshes (a worker must consume it).
BTT_DICOM_TASK_QUEUE = env_str("BTT_DICOM_TASK_QUEUE", "default")
for _uri_setting in ("BTT_DICOM_PATIENT_ID_SYSTEM", "BTT_DICOM_ACCESSION_SYSTEM"):
    _uri_value = globals()[_uri_setting]
    if _uri_value is not None and (":" not in _uri_value or any(c.isspace() for c in _uri_value)):
        raise ImproperlyConfigured(
            f"{_uri_setting} must be an absolute URI (urn:oid:..., http://...), got {_uri_value!r}"
        )
import zoneinfo  # noqa: E402 - only this block needs it

try:
    zoneinfo.ZoneInfo(BTT_DICOM_TIME_ZONE)
except (zoneinfo.ZoneInfoNotFoundError, ValueError):
    raise ImproperlyConfigured(
        f"BTT_DICOM_TIME_ZONE must be an IANA time zone name (Europe/Berlin, UTC), got {BTT_DICOM_TIME_ZONE!r}"
    ) from None

# --- HL7 v2 interface: MLLP listener, inbound mapping, ORU out ------------------------------
# (integrations/hl7v2/; the README's HL7 v2 section). BTT_MLLP_PORT is read above with the other ports.
BTT_MLLP_HOST = env_str("BTT_MLLP_HOST", "0.0.0.0")
BTT_RUN_MLLP = env_bool("BTT_RUN_MLLP", True)  # whether `serve` runs the MLLP listener
# A message larger than this (between the MLLP start and end blocks) is refused with an AR ACK.
BTT_MLLP_MAX_MESSAGE_BYTES = env_int("BTT_MLLP_MAX_MESSAGE_BYTES", 1024 * 1024, minimum=1024)
# Seconds a peer may stall inside a message (or a TLS handshake) before its connection is closed.
BTT_MLLP_TIMEOUT = env_float("BTT_MLLP_TIMEOUT", 30.0, minimum=0.1)
# Seconds an open connection may stay silent between messages (EHRs keep connections open).
BTT_MLLP_IDLE_TIMEOUT = env_float("BTT_MLLP_IDLE_TIMEOUT", 3600.0, minimum=1.0)
BTT_MLLP_MAX_CONNECTIONS = env_int("BTT_MLLP_MAX_CONNECTIONS", 64, minimum=1, maximum=10000)
# Database sessions of the listener: at most this many messages are applied at once.
BTT_MLLP_WORKERS = env_int("BTT_MLLP_WORKERS", 8, minimum=1, maximum=256)
# MLLP over TLS: a second listener on BTT_MLLP_TLS_PORT when certificate and key are both set;
# with a CA, clients must present a certificate it signed (and the sender verifies peers with it).
BTT_MLLP_TLS_CERT, BTT_MLLP_TLS_KEY, BTT_MLLP_TLS_CA = env_tls_files("BTT_MLLP")
BTT_MLLP_TLS_PORT = env_int("BTT_MLLP_TLS_PORT", 2576, minimum=1, maximum=65535)
# Our MSH-3 / MSH-4 on ACKs and outbound messages.
BTT_HL7_APPLICATION = env_str("BTT_HL7_APPLICATION", "BTTHEALTH")
BTT_HL7_FACILITY = env_str("BTT_HL7_FACILITY", "BTTHEALTH")
# Character set of messages without MSH-18 (a Python codec name: utf-8, cp1252, latin-1, ascii).
BTT_HL7_DEFAULT_ENCODING = env_str("BTT_HL7_DEFAULT_ENCODING", "utf-8")
# Identifier systems of PID-3 values without an assigning authority, and of accession numbers
# without one: the same as the DICOM node's by default, so EHR and DICOM patients and orders match.
BTT_HL7_PATIENT_ID_SYSTEM = env_str("BTT_HL7_PATIENT_ID_SYSTEM", BTT_DICOM_PATIENT_ID_SYSTEM)
BTT_HL7_ACCESSION_SYSTEM = env_optional_str("BTT_HL7_ACCESSION_SYSTEM") or BTT_DICOM_ACCESSION_SYSTEM
# Zone of HL7 date/times that carry no UTC offset (the EHR's local time).
BTT_HL7_TIME_ZONE = env_str("BTT_HL7_TIME_ZONE", BTT_DICOM_TIME_ZONE)
try:
    zoneinfo.ZoneInfo(BTT_HL7_TIME_ZONE)
except (zoneinfo.ZoneInfoNotFoundError, ValueError):
    raise ImproperlyConfigured(
        f"BTT_HL7_TIME_ZONE must be an IANA time zone name (Europe/Berlin, UTC), got {BTT_HL7_TIME_ZONE!r}"
    ) from None
# Outbound ORU: seconds to wait for a destination's ACK, delivery attempts before giving up, and
# the Celery queue of the delivery tasks (a worker must consume it).
BTT_HL7_SEND_TIMEOUT = env_float("BTT_HL7_SEND_TIMEOUT", 30.0, minimum=0.5)
BTT_HL7_SEND_MAX_ATTEMPTS = env_int("BTT_HL7_SEND_MAX_ATTEMPTS", 12, minimum=1, maximum=100)
BTT_HL7_RETRY_BACKOFF_MAX = env_int("BTT_HL7_RETRY_BACKOFF_MAX", 600, minimum=1, maximum=86400)
BTT_HL7_TASK_QUEUE = env_str("BTT_HL7_TASK_QUEUE", "default")
import codecs  # noqa: E402 - only this block needs it

try:
    codecs.lookup(BTT_HL7_DEFAULT_ENCODING)
except LookupError:
    raise ImproperlyConfigured(
        f"BTT_HL7_DEFAULT_ENCODING must be a character set Python knows (utf-8, cp1252), got {BTT_HL7_DEFAULT_ENCODING!r}"
    ) from None
for _uri_setting in ("BTT_HL7_PATIENT_ID_SYSTEM", "BTT_HL7_ACCESSION_SYSTEM"):
    _uri_value = globals()[_uri_setting]
    if _uri_value is not None and (":" not in _uri_value or any(c.isspace() for c in _uri_value)):
        raise ImproperlyConfigured(
            f"{_uri_setting} must be an absolute URI (urn:oid:..., http://...), got {_uri_value!r}"
        )

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
    "btt_health.console",  # clinician viewer at /, users/organizations and status page in /admin/
    "integrations.fhir",
    "integrations.dicom",
    "integrations.hl7v2",
    "ai_pipeline",
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
        # The transport polls its folder; the default second would delay every task by up to 1 s.
        "polling_interval": 0.1,
    }
else:
    CELERY_BROKER_URL = _broker_url
    CELERY_BROKER_TRANSPORT_OPTIONS = {}
    if _broker_url.startswith(("redis://", "rediss://", "sentinel://")):
        # kombu's Redis transport keeps one list per priority step and pops them in this order
        # (0 first): the AI pipeline's stat/asap/urgent/routine are 0/3/6/9 (ai_pipeline/tasks.py).
        # The order among queues stays round robin, so no queue starves another.
        CELERY_BROKER_TRANSPORT_OPTIONS = {
            "priority_steps": [0, 3, 6, 9],
            "queue_order_strategy": "round_robin",
        }
# RabbitMQ sorts a queue by message priority only when it was declared with x-max-priority:
# every queue Celery declares gets it (the AI pipeline sends 0-9, stat highest). A queue that
# exists already without it must be deleted once (RabbitMQ refuses to redeclare it otherwise).
# Redis ignores it; the embedded filesystem transport has no priorities at all (FIFO).
CELERY_TASK_QUEUE_MAX_PRIORITY = 10
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

# --- Events between the parts (btt_health/events.py) -------------------------------------------
# Extra subscribers, loaded in the process that emits (a Celery worker), as a comma-separated list
# of `event=package.module.function`, e.g. `study_received=myhospital.hooks.on_study`.
BTT_EVENT_SUBSCRIBERS = env_list("BTT_EVENT_SUBSCRIBERS", [])
for _entry in BTT_EVENT_SUBSCRIBERS:
    _event, _sep, _path = _entry.partition("=")
    if not _sep or not _event.strip() or "." not in _path.strip():
        raise ImproperlyConfigured(
            f"BTT_EVENT_SUBSCRIBERS entries must look like event=package.module.function, got {_entry!r}"
        )

# --- AI pipeline: model registry, inference runtime, trust score -----------------------------
# (ai_pipeline/registry.py, runtime.py, trust.py; docs/architecture.md "AI pipeline", docs/trust-score.md)
from ai_pipeline.config import parse_providers, parse_trust_weights  # noqa: E402

# Folders searched for models (each model a sub-folder with model.onnx and manifest.json), comma-separated.
BTT_MODEL_DIR = [Path(p) for p in env_list("BTT_MODEL_DIR", [])] or [
    BASE_DIR / "fixtures" / "models",
    BTT_DATA_DIR / "models",
]
# Whether a model seen for the first time is enabled (routed and run) before anyone looks at it.
BTT_MODELS_ENABLED_BY_DEFAULT = env_bool("BTT_MODELS_ENABLED_BY_DEFAULT", True)
# onnxruntime execution providers in order of preference (cuda, tensorrt, cpu or full names);
# empty: TensorRT, then CUDA where onnxruntime-gpu sees a GPU, then CPU.
BTT_ONNX_PROVIDERS = parse_providers(env_list("BTT_ONNX_PROVIDERS", []))
# Threads onnxruntime uses inside one operator (0: its default, one per core).
BTT_ONNX_THREADS = env_int("BTT_ONNX_THREADS", 0, minimum=0, maximum=256)
# Where TensorRT keeps the engines it builds (building one takes minutes; they are reused).
BTT_ONNX_TRT_CACHE_DIR = env_path("BTT_ONNX_TRT_CACHE_DIR", BTT_DATA_DIR / "models" / "tensorrt-cache")
# Trust-score weights per specialty, JSON: {"radiology": {"alpha": 0.5, "beta": 0.2, "gamma": 0.3}}.
# Merged over the built-in {"default": {"alpha": 0.5, "beta": 0.25, "gamma": 0.25}}; TrustWeights rows
# (admin) override both.
BTT_TRUST_WEIGHTS = parse_trust_weights(env_optional_str("BTT_TRUST_WEIGHTS"))
# H_consensus when there is nothing to compare with (no prior report, no other model): neutral.
BTT_TRUST_NEUTRAL_CONSENSUS = env_float("BTT_TRUST_NEUTRAL_CONSENSUS", 0.5, minimum=0.0)
if BTT_TRUST_NEUTRAL_CONSENSUS > 1:
    raise ImproperlyConfigured(
        f"BTT_TRUST_NEUTRAL_CONSENSUS must be between 0 and 1, got {BTT_TRUST_NEUTRAL_CONSENSUS}"
    )

# Inference tasks (ai_pipeline/tasks.py): the queue they go to (workers must consume it: it is in
# BTT_WORKER_QUEUES by default), their time limits in seconds, and how often a transient failure is retried.
BTT_INFERENCE_QUEUE = env_str("BTT_INFERENCE_QUEUE", "inference")
BTT_INFERENCE_SOFT_TIME_LIMIT = env_int("BTT_INFERENCE_SOFT_TIME_LIMIT", 600, minimum=1, maximum=86400)
BTT_INFERENCE_TIME_LIMIT = env_int("BTT_INFERENCE_TIME_LIMIT", 660, minimum=1, maximum=86400)
if BTT_INFERENCE_TIME_LIMIT <= BTT_INFERENCE_SOFT_TIME_LIMIT:
    raise ImproperlyConfigured("BTT_INFERENCE_TIME_LIMIT must be greater than BTT_INFERENCE_SOFT_TIME_LIMIT")
BTT_INFERENCE_MAX_RETRIES = env_int("BTT_INFERENCE_MAX_RETRIES", 5, minimum=0, maximum=100)
# Queue of jobs routed to a worker outside the hospital (RoutingRule.outside; they get a
# de-identified copy of the study); unset: BTT_INFERENCE_QUEUE.
BTT_INFERENCE_OUTSIDE_QUEUE = env_optional_str("BTT_INFERENCE_OUTSIDE_QUEUE")
# The sweep (ai_pipeline/jobs.py requeue_stuck_jobs; at worker start, then every
# BTT_INFERENCE_SWEEP_SECONDS, 0: only at start; `manage.py requeue_inference_jobs`) re-publishes
# jobs queued but never published after BTT_INFERENCE_PUBLISH_GRACE seconds, published but not
# started after BTT_INFERENCE_REQUEUE_AFTER seconds, and running past BTT_INFERENCE_TIME_LIMIT
# plus the grace.
BTT_INFERENCE_SWEEP_SECONDS = env_int("BTT_INFERENCE_SWEEP_SECONDS", 300, minimum=0, maximum=86400)
BTT_INFERENCE_PUBLISH_GRACE = env_int("BTT_INFERENCE_PUBLISH_GRACE", 60, minimum=1, maximum=86400)
BTT_INFERENCE_REQUEUE_AFTER = env_int("BTT_INFERENCE_REQUEUE_AFTER", 1800, minimum=60, maximum=7 * 86400)
# Where de-identified copies of studies for outside workers are written (removed after the run).
BTT_DEID_DIR = env_path("BTT_DEID_DIR", BTT_DATA_DIR / "deid")
# Hospital side of outside jobs (ai_pipeline/outside.py): seconds a job's download/result token is valid.
BTT_OUTSIDE_TOKEN_SECONDS = env_int("BTT_OUTSIDE_TOKEN_SECONDS", 3600, minimum=60, maximum=7 * 86400)
# The broker outside jobs are published to (give outside workers this one only, so they cannot read
# the hospital's queues); unset: CELERY_BROKER_URL.
BTT_OUTSIDE_BROKER_URL = env_optional_str("BTT_OUTSIDE_BROKER_URL")
# A worker outside the hospital (ai_pipeline/outside_worker.py): `BTT_OUTSIDE_WORKER=true celery -A
# btt_health worker -Q <BTT_INFERENCE_OUTSIDE_QUEUE>` never uses the database (no model registration,
# sweep or heartbeat at start); it downloads de-identified copies from BTT_HOSPITAL_URL, runs the
# model from its own BTT_MODEL_DIR, and posts the findings back there.
BTT_OUTSIDE_WORKER = env_bool("BTT_OUTSIDE_WORKER", False)
BTT_HOSPITAL_URL = (env_optional_str("BTT_HOSPITAL_URL") or "").rstrip("/")
if BTT_HOSPITAL_URL and not BTT_HOSPITAL_URL.startswith(("http://", "https://")):
    raise ImproperlyConfigured(f"BTT_HOSPITAL_URL must be an http(s) URL, got {BTT_HOSPITAL_URL!r}")
if BTT_OUTSIDE_WORKER and not BTT_HOSPITAL_URL:
    raise ImproperlyConfigured("BTT_OUTSIDE_WORKER needs BTT_HOSPITAL_URL (the hospital's base URL)")
# Where the outside worker keeps a job's download while it runs (removed after it unless
# BTT_OUTSIDE_KEEP_DOWNLOADS), and its HTTP timeout in seconds.
BTT_OUTSIDE_WORK_DIR = env_path("BTT_OUTSIDE_WORK_DIR", BTT_DATA_DIR / "outside")
BTT_OUTSIDE_KEEP_DOWNLOADS = env_bool("BTT_OUTSIDE_KEEP_DOWNLOADS", False)
BTT_OUTSIDE_HTTP_TIMEOUT = env_float("BTT_OUTSIDE_HTTP_TIMEOUT", 60.0, minimum=1.0)
# DICOM results (ai_pipeline/dicom_results.py): SR by default for every report (routing rules
# can ask for it per rule), and the remote AE titles results are sent to when no rule names any.
BTT_AI_DICOM_SR = env_bool("BTT_AI_DICOM_SR", False)
BTT_AI_RESULT_DESTINATIONS = env_list("BTT_AI_RESULT_DESTINATIONS", [])
# With no routing rule at all (a fresh install), run every enabled, available model whose manifest
# applies to the study (the demo model applies to CT). Once any rule exists, only rules route.
BTT_AI_ROUTE_WITHOUT_RULES = env_bool("BTT_AI_ROUTE_WITHOUT_RULES", True)

# --- Clinician viewer and admin console (btt_health/console/) ---------------------------------
LOGIN_URL = "/login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login"
# Seconds between the worklist's background refreshes (new studies, finished AI jobs).
BTT_CONSOLE_POLL_SECONDS = env_int("BTT_CONSOLE_POLL_SECONDS", 5, minimum=1, maximum=3600)
# Studies per worklist page.
BTT_CONSOLE_PAGE_SIZE = env_int("BTT_CONSOLE_PAGE_SIZE", 25, minimum=1, maximum=500)
# Seconds between a Celery worker's heartbeats and queue-depth samples (admin status page).
BTT_WORKER_HEARTBEAT_SECONDS = env_int("BTT_WORKER_HEARTBEAT_SECONDS", 15, minimum=1, maximum=3600)

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
