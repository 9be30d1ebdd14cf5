#!/usr/bin/env bash
# The accelerator figures of docs/benchmarks.md in one call, for a lent GPU machine
# (install the CUDA wheels first, docs/install.md, "Install on GPU or TPU", then run this with OUT
# set). Each
# measurement writes its JSON to $OUT as soon as it exists and is bounded by `timeout`,
# so one slow compile cannot eat the budget. The float32 baseline runs in the same call,
# so the ratios are same-card. Not run by the tests (no GPU there).
set -u
OUT="${OUT:-runs/gpu_benchmarks}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
small=(--config=configs/cifar10.py --config.model.n_layer=8 --config.model.n_embd=128
  --config.train.batch_size=128 --steps=10 --warmup=2)
run() {  # name, seconds, benchmark flags...
  local name="$1" limit="$2"; shift 2
  echo "[$(date +%T)] $name" >&2
  timeout "$limit" "$PY" scripts/benchmark.py "$@" > "$OUT/$name.json" 2> "$OUT/$name.err" \
    || echo "  $name: exit $? (see $OUT/$name.err)" >&2
}
"$PY" -c "import jax; print(jax.__version__, jax.devices())" > "$OUT/devices.txt" 2>&1
run small_float32 150 "${small[@]}"
run small_bfloat16 150 "${small[@]}" --dtype=bfloat16
run small_bfloat16_scan 150 "${small[@]}" --dtype=bfloat16 --config.model.scan_layers=True
run paper_compile_scan 200 --config=configs/cifar10.py --memory_only --dtype=bfloat16 \
  --config.model.scan_layers=True
echo "[$(date +%T)] done: $OUT" >&2
