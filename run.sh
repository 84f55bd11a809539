#!/usr/bin/env bash
# Installs the homeserver into ./.venv (pinned dependencies) and starts it on the embedded
# default: SQLite and media in ./data, config in ./homeserver.yaml (generated on first run).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
ensure_venv
exec .venv/bin/homeserver run "$@"
