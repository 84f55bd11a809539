#!/usr/bin/env bash
# Benchmarks side by side with Synapse (bench/README.md): installs the homeserver with the
# bench extras into ./.venv, Synapse into bench/.venv-synapse, starts both on loopback one at
# a time, runs the scenarios and writes bench/results/<timestamp>/. Options: ./bench.sh --help
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
ensure_venv bench
exec .venv/bin/python -m bench "$@"
