# Sourced by scripts/test.sh and scripts/demo.sh from the repository root: creates .venv if
# it is missing (with $PYTHON, default python3) and installs into it the exact versions CI
# tests (requirements/lock-py311.txt), then vdm_jax itself, editable, with no further
# resolution.
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -c 'import sys; sys.version_info[:2] == (3, 11) or print(
  f"Note: .venv has Python {sys.version.split()[0]}; requirements/lock-py311.txt is "
  "resolved and tested for 3.11 (PYTHON=python3.11 picks it for a new .venv).")'
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/lock-py311.txt
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
