#!/usr/bin/env bash
# The README's test command: set up whatever is missing, then lint and run every test.
#
#   bash scripts/test.sh
#
# Idempotent; on a fresh Debian machine (as root, or with sudo) it installs the system packages,
# creates .venv, installs requirements-dev.txt and starts PostgreSQL, Redis and RabbitMQ when they
# do not answer. Then:
#   1. ruff check . and ruff format --check .
#   2. pytest, every test, on PostgreSQL and Redis (the suite starts real workers and stacks);
#   3. the e2e tests once more, against the stack started exactly as the README's run command
#      starts it (embedded SQLite database and broker; see tests/e2e/conftest.py).
# Every step runs; the script exits non-zero when any of them failed.
#
# Set DATABASE_URL / CELERY_BROKER_URL beforehand to test against other servers (pytest-django
# creates and drops the database "test_<name>" there). Extra arguments go to the main pytest run.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'scripts/test.sh: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "needs root for: $* (run as root, or install sudo)"
  fi
}

# --- System packages: only what is missing ------------------------------------------------------
PYTHON=$(command -v python3.11 || command -v python3 || true)
missing=()
if [ -z "$PYTHON" ] || ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  missing+=(python3 python3-venv)
fi
command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
command -v psql >/dev/null 2>&1 && command -v pg_isready >/dev/null 2>&1 || missing+=(postgresql-client)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
command -v storescu >/dev/null 2>&1 && command -v echoscu >/dev/null 2>&1 || missing+=(dcmtk)  # DICOM peers of tests/dicom
command -v Orthanc >/dev/null 2>&1 || missing+=(orthanc)  # a real PACS for tests/dicom (tests/dicom/orthanc.py runs its own)
[ -x /usr/bin/chromium ] || missing+=(chromium)  # the browser tests/console drives (Playwright, headless)
if [ ${#missing[@]} -gt 0 ]; then
  say "Installing system packages: ${missing[*]}"
  as_root apt-get update -q || die "apt-get update failed"
  as_root apt-get install -y -q --no-install-recommends "${missing[@]}" || die "apt-get install failed"
  PYTHON=$(command -v python3.11 || command -v python3)
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || die "$PYTHON is Python $("$PYTHON" -c 'import platform; print(platform.python_version())'); the project needs 3.11"

# --- Python environment --------------------------------------------------------------------------
if ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' >/dev/null 2>&1; then
  say "Creating .venv with $PYTHON"
  "$PYTHON" -m venv --clear .venv || die "could not create .venv"
fi
say "Installing requirements-dev.txt"
.venv/bin/python -m pip install -q -r requirements-dev.txt || die "pip install -r requirements-dev.txt failed"

# --- Services ------------------------------------------------------------------------------------
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq "$seconds"); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 1
  done
  die "$what did not come up within ${seconds}s"
}
tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  say "Starting PostgreSQL"
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$version" ]; then
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    as_root pg_createcluster "$version" main || die "could not create a PostgreSQL cluster"
  fi
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || die "could not start PostgreSQL"
  wait_for 60 PostgreSQL pg_isready -q -h 127.0.0.1 -p 5432
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
  say "Starting Redis"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || die "could not start Redis"
  wait_for 30 Redis sh -c 'redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG'
fi
if ! tcp_open 127.0.0.1 5672; then
  say "Starting RabbitMQ"
  as_root rabbitmq-server -detached || die "could not start RabbitMQ"
  wait_for 180 RabbitMQ tcp_open 127.0.0.1 5672
fi

if [ -z "${DATABASE_URL:-}" ]; then
  DATABASE_URL=postgres://postgres@127.0.0.1:5432/btt_health
  if ! psql -w "postgres://postgres@127.0.0.1:5432/postgres" -qAtc 'select 1' >/dev/null 2>&1; then
    # A stock Debian install asks TCP clients for a password: give the postgres role one.
    say "Setting a password for the PostgreSQL role postgres (TCP connections need one here)"
    as_root runuser -u postgres -- psql -qc "ALTER ROLE postgres PASSWORD 'postgres'" \
      || die "cannot connect to PostgreSQL as postgres on 127.0.0.1:5432"
    DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/btt_health
  fi
fi
export DATABASE_URL
export CELERY_BROKER_URL=${CELERY_BROKER_URL:-redis://127.0.0.1:6379/0}
export BTT_TEST_AMQP_URL=${BTT_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672//}
# A data dir of its own (secret key, static files), so the tests neither use nor touch ./data.
BTT_DATA_DIR=$(mktemp -d "${TMPDIR:-/tmp}/btt-test-data.XXXXXX")
export BTT_DATA_DIR
trap 'rm -rf "$BTT_DATA_DIR"' EXIT

# --- Lint and tests ------------------------------------------------------------------------------
failed=()
run_step() {  # run_step NAME COMMAND...
  local name=$1 code
  shift
  say "$name"
  "$@"
  code=$?
  if [ "$code" = 5 ]; then
    echo "$name: no tests ran (pytest exit code 5)" >&2
  fi
  [ "$code" = 0 ] || failed+=("$name (exit code $code)")
}

run_step "ruff check" .venv/bin/ruff check .
run_step "ruff format --check" .venv/bin/ruff format --check .
run_step "pytest on PostgreSQL ($CELERY_BROKER_URL broker)" .venv/bin/python -m pytest "$@"
run_step "e2e tests against the stack started as the README's run command starts it" \
  env BTT_E2E_README_STACK=1 .venv/bin/python -m pytest -m e2e tests/e2e

echo
if [ ${#failed[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "All checks passed."
