#!/usr/bin/env bash
# Everything a lent GPU should check, most important first, in one go (a lent machine has minutes; one
# command may run 10): quick eager checks of the CUDA kernels (the Triton GEMV kernel included), the GEMV
# kernel against torch's per product, the decode benchmark (bf16 vs the GEMV kernel in bf16/int8/int4, same
# run): about 9 minutes, under the 10 a lent machine's command may take. STAGES=tier (best as a second
# call) runs the whole GPU test tier (about a dozen compiles of tiny models, 20-60 s each). Logs, JSON: $OUT.
# Then the training benchmark (benchmarks/train_gpu.py, about 4 minutes within TRAIN_BUDGET: gemma-2b pretraining
# steps vs transformers, the LoRA SFT stage vs transformers + peft (peft where installed), gemma-7b): with it the
# default list passes one command's 10 minutes, so on a lent machine run STAGES=quick,gemv,decode and then
# STAGES=train as two calls.
#   bash benchmarks/gpu_session.sh            # on the GPU machine, from the repository root
#   STAGES=train bash benchmarks/gpu_session.sh                                  # the training benchmark alone
#   STAGES=tier bash benchmarks/gpu_session.sh                                   # the GPU test tier
#   MODES=bf16,int8,int4,int4r MODELS=gemma-2b bash benchmarks/gpu_session.sh   # other decode modes
set -uo pipefail
OUT=${OUT:-benchmarks/results}; mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
T0=$SECONDS
STAGES=",${STAGES:-quick,gemv,decode,train},"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"
TIER=(-m pytest --run-cuda -m cuda tests/engine/test_cuda.py -q -p no:cacheprovider -W ignore::DeprecationWarning)
[[ $STAGES == *,quick,* ]] && timeout "${QUICK_TIMEOUT:-90}" $PY "${TIER[@]}" -k "eager or gemv_kernel" 2>&1 | tee "$OUT/gpu_quick_tests.log" | tail -8
[[ $STAGES == *,gemv,* ]] && echo "[$((SECONDS - T0))s] GEMV kernel per product" && timeout "${GEMV_TIMEOUT:-150}" $PY benchmarks/gpu_gemv.py --models "${MODELS:-gemma-2b,gemma-7b}" --budget-s 130 \
  --out "$OUT" 2>&1 | grep -v -i warn | tee "$OUT/gpu_gemv.log"
[[ $STAGES == *,decode,* ]] && echo "[$((SECONDS - T0))s] decode" && timeout "${BENCH_TIMEOUT:-300}" $PY benchmarks/gpu_decode.py --models "${MODELS:-gemma-2b,gemma-7b}" \
  --modes "${MODES:-bf16,bf16-gemv,int8-gemv,int4-gemv,int4r-gemv}" --skip "${SKIP:-transformers,batches}" \
  --budget-s "${BUDGET:-270}" --out "$OUT" 2>&1 | grep -v -i warn | tee "$OUT/gpu_bench.log" | grep -v '^ \|^{\|^}'
[[ $STAGES == *,train,* ]] && echo "[$((SECONDS - T0))s] train" && timeout "${TRAIN_TIMEOUT:-270}" $PY benchmarks/train_gpu.py \
  --budget-s "${TRAIN_BUDGET:-240}" --out "$OUT" 2>&1 | grep -v -i warn | tee "$OUT/gpu_train.log"
if [[ $STAGES == *,tier,* ]]; then
  echo "[$((SECONDS - T0))s] GPU test tier"
  timeout "${TEST_TIMEOUT:-480}" $PY "${TIER[@]}" 2>&1 | tee "$OUT/gpu_tests.log" | tail -30
fi
echo "[$((SECONDS - T0))s] done"
