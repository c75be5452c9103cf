#!/usr/bin/env bash
# Everything a lent GPU should check, in one go (a lent machine has minutes): the GPU test tier, then the
# decode benchmark under a time budget. Logs and JSON go to $OUT (default benchmarks/results).
#   bash benchmarks/gpu_session.sh            # on the GPU machine, from the repository root
set -uo pipefail
OUT=${OUT:-benchmarks/results}; mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
timeout "${TEST_TIMEOUT:-150}" $PY -m pytest --run-cuda -m cuda tests/test_cuda.py -q -p no:cacheprovider \
  -W ignore::DeprecationWarning 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
timeout "${BENCH_TIMEOUT:-420}" $PY benchmarks/gpu_decode.py --budget-s "${BUDGET:-390}" --out "$OUT" 2>&1 \
  | grep -v -i warn | tee "$OUT/gpu_bench.log" | grep -v '^ \|^{\|^}'
