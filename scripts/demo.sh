#!/usr/bin/env bash
# The main job on a fresh machine: create .venv if missing, install, train a VDM on the
# offline digits data (about 4 minutes on 2 CPU cores), evaluate its test bits/dim with
# its standard error and write a sample grid. Running it again resumes from runs/digits
# (finished training is not repeated). Config overrides apply to every step; evaluation
# and sampling read the run's recorded config from the work directory.
#
#   bash scripts/demo.sh [--config.train.num_steps=N ...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
WORKDIR="${WORKDIR:-runs/digits}"
.venv/bin/python scripts/train.py --config=configs/digits.py --workdir="$WORKDIR" "$@"
echo
echo "== Test bits/dim of the EMA parameters (one exact pass over the 300 test digits):"
.venv/bin/python scripts/evaluate.py --workdir="$WORKDIR" "$@"
echo
echo "== Samples (ancestral sampler, 1000 steps):"
.venv/bin/python scripts/sample.py --workdir="$WORKDIR" --num_samples=64 --num_steps=1000 "$@"
