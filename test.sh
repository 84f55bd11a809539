#!/usr/bin/env bash
# Installs the homeserver and its test dependencies into ./.venv and runs the whole suite:
# unit, storage and API tests on SQLite and PostgreSQL (127.0.0.1:5432), end-to-end tests
# with real servers and matrix-nio. Extra arguments go to pytest; the tests run on every
# core (pytest-xdist), `-n 0` runs them in this process.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
ensure_venv test
# pytest exits 5 when it collected no tests: that is a failure here, never a pass.
exec .venv/bin/python -m pytest -p no:cacheprovider -n "${TEST_WORKERS:-auto}" --dist worksteal "$@"
