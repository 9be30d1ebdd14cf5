#!/usr/bin/env bash
# Optional test jobs against other versions than requirements/lock-py311.txt (which
# scripts/test.sh and CI install). Each builds its own virtualenv and runs the pure-maths
# tests, their docstring examples and the check that the pure maths imports no Flax;
# "newest" adds one real training run.
#
#   bash scripts/test_versions.sh newest   # the newest jax, jaxlib, flax, optax, orbax-checkpoint,
#                                          # grain (and everything else) the registry serves;
#                                          # Python >= 3.12 (jax >= 0.11 needs it), from PATH or pyenv
#   bash scripts/test_versions.sh lowest   # the minimum versions of pyproject.toml's core
#                                          # dependencies (jax, numpy), on Python 3.11
#   bash scripts/test_versions.sh keep     # a user's environment: the newest jax and flax
#                                          # first, then `pip install .` of this clone must
#                                          # change none of them, and the README's
#                                          # loss-function example must run (Python >= 3.12)
#
# Extra arguments go to pytest. PYTHON=/path/to/python picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
job="${1:?usage: bash scripts/test_versions.sh newest|lowest|keep [pytest args]}"
shift

PURE_TESTS=(
  tests/test_schedules.py tests/test_gaussian.py tests/test_elbo.py tests/test_transforms.py
  tests/test_limits.py tests/test_hvae.py tests/test_readme.py tests/test_install.py
  vdm_jax/schedules.py vdm_jax/gaussian.py vdm_jax/elbo.py vdm_jax/times.py
  vdm_jax/predictions.py vdm_jax/vae_elbo.py vdm_jax/hvae.py vdm_jax/testing.py
)
TRAIN_SMOKE=(
  "tests/test_train.py::test_short_run_loss_decreases_and_writes_outputs"
  tests/test_pipeline_flags.py vdm_jax/models/vdm.py vdm_jax/models/vae.py vdm_jax/data/pipeline.py
)

find_python() {  # the first interpreter >= $1 on PATH or under pyenv
  local minor="$1" candidate
  for candidate in python3.13 python3.12 $(ls -d "$(pyenv root 2>/dev/null)"/versions/3.1[2-9]*/bin/python 2>/dev/null | sort -rV); do
    if command -v "$candidate" >/dev/null &&
      "$candidate" -c "import sys; sys.exit(sys.version_info < (3, $minor))" 2>/dev/null; then
      command -v "$candidate"
      return
    fi
  done
  echo "No Python >= 3.$minor found on PATH or under pyenv; set PYTHON=..." >&2
  return 1
}

pip_install() { "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }

case "$job" in
  newest)
    venv=.venv-newest
    python="${PYTHON:-$(find_python 12)}"
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    # Eager upgrades: every package, direct or not, at the newest version the ranges allow.
    pip_install --upgrade pip
    pip_install --upgrade --upgrade-strategy eager -e '.[all,test]' \
      jax jaxlib flax optax orbax-checkpoint grain
    tests=("${PURE_TESTS[@]}" "${TRAIN_SMOKE[@]}")
    ;;
  lowest)
    venv=.venv-lowest
    python="${PYTHON:-python3.11}"
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    # The declared minimum of each core dependency, exactly (plus pytest and scipy to test).
    mins=$("$venv/bin/python" - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(" ".join(re.sub(r">=", "==", d) for d in deps))
PY
)
    # shellcheck disable=SC2086
    pip_install $mins pytest pytest-xdist scipy
    pip_install --no-deps -e .
    # shellcheck disable=SC2086
    "$venv/bin/python" - $mins <<'PY'
import importlib.metadata as md, sys
from packaging.version import Version
for req in sys.argv[1:]:
  name, version = req.split("==")
  got = md.version(name)
  assert Version(got) == Version(version), f"{name} {got} is installed, not the minimum {version}"
PY
    tests=("${PURE_TESTS[@]}")
    ;;
  keep)
    venv=.venv-keep
    python="${PYTHON:-$(find_python 12)}"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    pip_install --upgrade pip
    pip_install --upgrade jax jaxlib flax numpy
    freeze() { "$venv/bin/python" -m pip list --format=freeze --disable-pip-version-check 2>/dev/null |
      grep -iE '^(jax|jaxlib|flax|numpy|optax|orbax-checkpoint|ml-dtypes|scipy)=='; }
    before="$(freeze)"
    pip_install .  # not editable: the example below imports the installed package
    after="$(freeze)"
    echo "Before: $(echo $before)"
    echo "After pip install .: $(echo $after)"
    [ "$before" = "$after" ] || { echo "pip install . changed the environment above" >&2; exit 1; }
    repo="$PWD"
    (cd "${TMPDIR:-/tmp}" && "$repo/$venv/bin/python" - "$repo/README.md" <<'PY'
import pathlib, re, sys
import jax, jax.numpy as jnp, numpy as np
blocks = re.findall(r"```python\n(.*?)```", pathlib.Path(sys.argv[1]).read_text(), re.S)
block = [b for b in blocks if "eps_model" in b][0]  # the example of the loss

def eps_model(params, z_t, gamma_t):  # a stand-in network, as in tests/test_readme.py
  return params["w"] * z_t + params["b"] * gamma_t[:, None, None, None]

ns = {
  "params": {"w": jnp.float32(0.5), "b": jnp.float32(0.01)},
  "k": jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3))),
  "key": jax.random.key(0),
  "eps_model": eps_model,
}
exec(block, ns)
import vdm_jax
assert "site-packages" in vdm_jax.__file__, vdm_jax.__file__
assert all(np.isfinite(float(g)) for g in ns["grads"].values())
heavy = [m for m in ("flax", "optax", "orbax", "grain", "tensorflow_datasets") if m in sys.modules]
print(f"README example ran with jax {jax.__version__} (vdm_jax from {vdm_jax.__file__});",
      "training stack imported:", heavy or "none")
PY
)
    exit 0
    ;;
  *)
    echo "Unknown job $job; choose newest, lowest or keep." >&2
    exit 2
    ;;
esac

"$venv/bin/python" - <<'PY'
import importlib.metadata as md, sys
names = ["jax", "jaxlib", "numpy", "flax", "optax", "orbax-checkpoint", "grain", "diffrax", "tensorflow-datasets"]
found = {n: md.version(n) for n in names if any(True for _ in md.distributions(name=n))}
print(f"Python {sys.version.split()[0]}:", ", ".join(f"{n} {v}" for n, v in found.items()))
PY
"$venv/bin/python" -m pytest -n "${PYTEST_WORKERS:-2}" "${tests[@]}" "$@"
