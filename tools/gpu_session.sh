#!/usr/bin/env bash
# Runs every GPU test and benchmark in one go on a machine with an NVIDIA GPU; results under $OUT (or ./gpu-out).
# Usage (repo root):  bash tools/gpu_session.sh
set -uo pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export VRAM_STEWARD_STATE_DIR=/tmp/vs-state VRAM_STEWARD_LOG_DIR=/tmp/vs-log VRAM_STEWARD_CONFIG_DIR=/tmp/vs-config
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 --version; } > "$OUT/machine.txt" 2>&1
timeout ${GPU_TEST_TIMEOUT:-240} python3 -m pytest tests/gpu -v -p no:cacheprovider -o addopts="" ${PYTEST_EXTRA:-} 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
for b in ${BENCHES:-seal_bench evict_bench reaction_bench command_latency_bench}; do
  [ -f bench/$b.py ] || continue
  echo "== $b"; timeout ${BENCH_TIMEOUT:-200} python3 bench/$b.py --out "$OUT/$b.json" > "$OUT/$b.log" 2>&1; echo "rc=$?"; tail -30 "$OUT/$b.log"
done
