# Sourced by scripts/lock.sh and scripts/check_deps.sh: sets $UV to a uv executable (the
# one on PATH, or one installed once into a tools venv outside .venv).
UV="${UV:-$(command -v uv || true)}"
if [ -z "$UV" ]; then
  # uv resolves from package metadata alone (no wheel downloads); keep it out of .venv.
  tools="${TMPDIR:-/tmp}/vdm_jax_uv_$(id -u)"
  [ -x "$tools/bin/uv" ] || { "${PYTHON:-python3}" -m venv "$tools" && "$tools/bin/pip" install --quiet uv; }
  UV="$tools/bin/uv"
fi
# uv reads its own settings, not pip's: pass on an index that pip is configured with.
if [ -n "${PIP_INDEX_URL:-}" ]; then export UV_INDEX_URL="${UV_INDEX_URL:-$PIP_INDEX_URL}"; fi
