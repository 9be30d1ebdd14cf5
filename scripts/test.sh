#!/usr/bin/env bash
# The test command: creates .venv if missing, installs vdm_jax with its test extras,
# lints and runs the test suite (on 2 cores, under 10 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" "$@"
