#!/usr/bin/env bash
# Builds the documentation site into site/: the pages of docs/ and the API reference from
# the docstrings (mkdocs.yml), in strict mode, so a broken link, a missing page or a
# docstring that does not parse fails the build. Uses .venv (created by scripts/test.sh
# or scripts/demo.sh: the lock includes the `docs` extra), or the interpreter PYTHON_DOCS
# names. Open site/index.html. A new page of docs/ goes into mkdocs.yml's nav and the
# README's "Documentation" list (tests/test_docs.py checks both).
#
#   bash scripts/docs.sh [mkdocs build options]
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON_DOCS:-.venv/bin/python}"
"$python" -c 'import mkdocstrings_handlers.python, latex2mathml' 2>/dev/null || {
  echo "error: the docs extra is not installed in .venv: run bash scripts/test.sh (which" \
    "installs requirements/lock-py311.txt), or .venv/bin/pip install -e '.[docs]'." >&2
  exit 1
}
NO_MKDOCS_2_WARNING=1 "$python" -m mkdocs build --strict --clean --site-dir site "$@"
echo "site/index.html"
