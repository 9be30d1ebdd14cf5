#!/usr/bin/env bash
# The test command: creates .venv if missing, installs the exact versions of
# requirements/lock-py311.txt and vdm_jax itself (editable, no further resolution), lints,
# and runs the test suite with the docstring examples, less the tests marked slow.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# Without arguments, the tests marked slow (end-to-end runs of a minute or more: the
# installed console scripts, the format-1 work directory, two-process training, the photo
# patches) are left out; `bash scripts/test.sh -m 'slow and not soak'` runs only them, as CI
# does next, and `-m soak` the few of several minutes each (the gs:// runs).
if [ "$#" -eq 0 ]; then set -- -m "not slow"; fi
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" --dist worksteal "$@"
