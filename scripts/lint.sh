#!/usr/bin/env bash
# The checks CI runs before the tests: ruff (lint and format) and mypy --strict.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
ensure_venv test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy homeserver client_api admin_api media_repo push_gateway federation
