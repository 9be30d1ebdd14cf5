#!/usr/bin/env bash
# Dependency checks that install nothing (uv resolves from package metadata; no wheel,
# CUDA or TPU library is downloaded), run by CI:
#   1. requirements/lock-py311.txt is current: resolving pyproject.toml again, with the
#      lock's versions preferred, gives the same pins;
#   2. the accelerator extras cuda12, cuda13 and tpu resolve with everything else, on
#      Linux x86_64, for Python 3.11 within the lock's versions and for Python 3.12 at
#      the newest; the jax, jaxlib and plugin versions they would install are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_uv.sh
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

pins() { grep -E '^[A-Za-z0-9]' "$1"; }

cp requirements/lock-py311.txt "$tmp/lock.txt"
"$UV" pip compile --quiet pyproject.toml \
  --extra train --extra ode --extra plots --extra tensorboard --extra gcs --extra test --extra docs \
  --python-version 3.11 -o "$tmp/lock.txt"
if ! diff <(pins requirements/lock-py311.txt) <(pins "$tmp/lock.txt"); then
  echo "requirements/lock-py311.txt is out of date with pyproject.toml: run bash scripts/lock.sh" >&2
  exit 1
fi
echo "lock: current ($(pins requirements/lock-py311.txt | wc -l) pins)"

for extra in cuda12 cuda13 tpu; do
  for python in 3.11 3.12; do
    constraint=()
    [ "$python" = 3.11 ] && constraint=(--constraint requirements/lock-py311.txt)
    out="$tmp/$extra-$python.txt"
    "$UV" pip compile --quiet pyproject.toml --extra all --extra "$extra" "${constraint[@]}" \
      --python-version "$python" --python-platform x86_64-manylinux_2_31 -o "$out"
    echo "$extra, Python $python: $(grep -E '^(jax|jaxlib|jax-cuda[0-9]+-plugin|jax-cuda[0-9]+-pjrt|libtpu)==' "$out" | tr '\n' ' ')"
  done
done
