#!/usr/bin/env bash
# Everything a lent GPU should check, in one go (a lent machine has minutes): the GPU test tier (about a
# dozen compiles of tiny models, 20-60 s each on an H200), then the decode benchmark under a time budget
# (BUDGET seconds; the first gemma-2b compile alone takes ~70 s). Logs and JSON go to $OUT.
#   bash benchmarks/gpu_session.sh            # on the GPU machine, from the repository root
set -uo pipefail
OUT=${OUT:-benchmarks/results}; mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
timeout "${TEST_TIMEOUT:-360}" $PY -m pytest --run-cuda -m cuda tests/test_cuda.py -q -p no:cacheprovider \
  -W ignore::DeprecationWarning 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
timeout "${BENCH_TIMEOUT:-420}" $PY benchmarks/gpu_decode.py --budget-s "${BUDGET:-390}" --out "$OUT" 2>&1 \
  | grep -v -i warn | tee "$OUT/gpu_bench.log" | grep -v '^ \|^{\|^}'
