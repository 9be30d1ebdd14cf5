#!/usr/bin/env bash
# Regenerates requirements/lock-py311.txt, the exact versions that scripts/test.sh,
# scripts/demo.sh and CI install: every extra the README's commands use (all + test + docs),
# resolved from pyproject.toml's ranges for Python 3.11 on this platform. Run it after
# changing a dependency in pyproject.toml, then run scripts/test.sh and commit both files.
#
#   bash scripts/lock.sh [--upgrade-package jax ...]   # extra arguments go to uv pip compile
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_uv.sh
"$UV" pip compile pyproject.toml \
  --extra train --extra ode --extra plots --extra tensorboard --extra gcs --extra test --extra docs \
  --python-version 3.11 --custom-compile-command "bash scripts/lock.sh" \
  -o requirements/lock-py311.txt "$@"
