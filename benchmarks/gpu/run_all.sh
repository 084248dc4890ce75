#!/usr/bin/env bash
# Every GPU measurement of the project in ONE call of at most ~9 minutes on the H100/H200 test machine:
#   1 env       card, driver, torch, what is importable                     -> $OUT/env.txt
#   2 build     the extension against that machine's torch (sm_90)          -> $OUT/build.log
#   3 tests     pytest -m needs_cuda over tests/                            -> $OUT/tests_cuda.log
#   4 ops       benchmarks/bench_ops.py --device cuda                       -> $OUT/ops_*.json
#   5 fig5      benchmarks/memory_vs_ntrain.py (time-budgeted, + ablation and profile) -> $OUT/fig5_*.{json,csv,md,png}
#   6 data      benchmarks/bench_data.py --device cuda        (only when DALI and PyAV import)
#   7 train     a short train.py --config ds_msrvtt.json run  (only when deepspeed and PyAV import)
# Each step has its own timeout, and the whole run a deadline, so one failure or hang does not lose the rest.
# JSON results land in $OUT (returned by the device tool) and are copied into benchmarks/results/.
#
#   bash benchmarks/gpu/run_all.sh              # on the GPU machine (from the repo root or anywhere)
#   RUN_DIR (default /tmp/clipbert_gpu_run) is the work folder; $OUT (or benchmarks/results/gpu_run, or
#   /tmp/clipbert_gpu_dryrun for a dry run) gets gpu_run.tar.gz with every log, steps.txt and the JSONs.
#   bash benchmarks/gpu/run_all.sh --dry-run    # on a CPU machine: the same steps, tiny and quick
# CLIPBERT_GPU_DRY_RUN=1 is the same as --dry-run. RUN_ALL_BUDGET_S (default 530) is the whole-run deadline.
set -uo pipefail

DRY=${CLIPBERT_GPU_DRY_RUN:-0}
[[ "${1:-}" == "--dry-run" ]] && DRY=1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 2
# The device tool returns at most 8 files from $OUT, so every step writes into a work folder and the run
# ends by packing it into $DEST/gpu_run.tar.gz, next to steps.txt and the result JSONs (at most 6).
# A dry run (CPU) never writes under benchmarks/results/: those hold measured GPU figures only.
if [[ $DRY == 1 ]]; then DEST=${OUT:-/tmp/clipbert_gpu_dryrun}; else DEST=${OUT:-$ROOT/benchmarks/results/gpu_run}; fi
OUT=${RUN_DIR:-/tmp/clipbert_gpu_run}
rm -rf "$OUT"; mkdir -p "$OUT" "$DEST" "$ROOT/benchmarks/results"
BUDGET=${RUN_ALL_BUDGET_S:-530}
START=$(date +%s)

if [[ $DRY == 1 ]]; then
  PY=${PYTHON:-$ROOT/.venv/bin/python}
  DEVICE=cpu
  export OMP_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=""
else
  PY=${PYTHON:-python3}
  DEVICE=cuda
  # tests/conftest.py defaults TRITON_INTERPRET to 1 (CPU CI); on the GPU the Triton kernels must compile.
  export TRITON_INTERPRET=0
fi
# The machine exports TORCH_CUDA_ARCH_LIST=9.0a, which DeepSpeed's op builder cannot parse (../shared/docs/GPU.md).
export TORCH_CUDA_ARCH_LIST=9.0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TORCH_EXTENSIONS_DIR=$ROOT/.torch_extensions PYTHONUNBUFFERED=1
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME LIMIT_S CMD...: runs CMD under min(LIMIT_S, time left), logs to $OUT/NAME.log, never aborts the run.
step() {
  local name=$1 limit=$2; shift 2
  local rest; rest=$(left)
  (( rest < limit )) && limit=$rest
  if (( limit < 10 )); then
    echo "SKIP  $name (run deadline reached)" | tee -a "$OUT/steps.txt"; return 0
  fi
  local t0; t0=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local verdict=ok; (( rc == 124 || rc == 137 )) && verdict="TIMEOUT after ${limit}s"; (( rc != 0 && rc != 124 && rc != 137 )) && verdict="FAILED rc=$rc"
  printf '%-6s %-10s %4ss  %s\n' "$([[ $verdict == ok ]] && echo OK || echo FAIL)" "$name" "$(( $(date +%s) - t0 ))" "$verdict" | tee -a "$OUT/steps.txt"
  [[ $verdict == ok ]] || tail -n 15 "$OUT/$name.log"
  # On the GPU machine keep a copy beside the code; a dry run leaves benchmarks/results/ alone.
  [[ $DRY == 1 ]] || cp "$OUT"/*.json "$ROOT/benchmarks/results/" 2>/dev/null || true
  return 0
}

has() { "$PY" -c "import $1" > /dev/null 2>&1; }

: > "$OUT/steps.txt"
echo "run_all: dry=$DRY device=$DEVICE python=$PY out=$OUT budget=${BUDGET}s" | tee -a "$OUT/steps.txt"

# 1 env
step env 30 bash -c "date -u; nvidia-smi || true; \"$PY\" -c 'import torch, sys; print(sys.version); print(torch.__version__, torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())'; \
  for m in triton transformers deepspeed nvidia.dali av; do \"$PY\" -c \"import \$m; print('\$m', getattr(\$m, '__version__', '?'))\" 2>/dev/null || echo \"\$m: not importable\"; done"

# 2 build: against the machine's torch; CLIPBERT_CUDA=1 fails loudly if nvcc is missing.
if [[ $DRY == 1 ]]; then
  step build 60 "$PY" -c "import clipbert, clipbert.ops; print('package imports; dry run does not rebuild')"
else
  step build 180 env CLIPBERT_CUDA=1 MAX_JOBS=16 "$PY" -m pip install --no-build-isolation --no-deps -e .
fi

# 3 CUDA op tests
if [[ $DRY == 1 ]]; then
  step tests_cuda 60 "$PY" -m pytest -m needs_cuda tests/ -q --collect-only
else
  step tests_cuda 90 "$PY" -m pytest -m needs_cuda tests/ -q -x -p no:cacheprovider
fi

# 4 fused-op benchmark
if [[ $DRY == 1 ]]; then
  step ops 30 "$PY" benchmarks/bench_ops.py --help
else
  step ops 60 "$PY" benchmarks/bench_ops.py --device cuda --out "$OUT/ops_cuda.json"
fi

# 5 Figure 5: the search stops at its own budget; the step's timeout leaves it room to write its files.
if [[ $DRY == 1 ]]; then
  step fig5 120 "$PY" benchmarks/memory_vs_ntrain.py --device cpu --small --no-compile --ntrain 1 4 --frames 2 \
    --steps 2 --warmup 1 --time-batch 2 --threads 1 --ablation --profile --out-dir "$OUT" --tag fig5_dryrun
else
  FIG5_S=${FIG5_BUDGET_S:-250}
  CARD=$("$PY" -c "import torch; print(torch.cuda.get_device_name().split()[-1].lower() if torch.cuda.is_available() else 'nogpu')" 2>/dev/null | tr -cd 'a-z0-9')
  step fig5 $(( FIG5_S + 60 )) "$PY" benchmarks/memory_vs_ntrain.py --device cuda --time-budget-s "$FIG5_S" \
    --mem-cap-gib 32 --ablation --profile --out-dir "$OUT" --tag "fig5_${CARD:-gpu}"
fi

# 6 data pipeline (DALI GPU decoding): only with the carried wheels (docs/PERFORMANCE.md says how).
if has nvidia.dali && has av; then
  if [[ $DRY == 1 ]]; then
    step data 60 "$PY" benchmarks/bench_data.py --help
  else
    step data 60 "$PY" benchmarks/bench_data.py --device cuda --out "$OUT/data_cuda.json"
  fi
else
  echo "SKIP  data       (nvidia.dali or av not importable: stage them with ../shared/device/stage.sh)" | tee -a "$OUT/steps.txt"
fi

# 7 short DeepSpeed training run on synthetic MSRVTT-format data, killed by its timeout if it runs long.
if has deepspeed && has av; then
  SYN=${SYN_DIR:-/tmp/clipbert_syn}
  if [[ $DRY == 1 ]]; then
    step train 60 "$PY" train.py --help
  else
    step synth 60 "$PY" -m clipbert.data.synthetic --out "$SYN"
    step train 90 "$PY" train.py --config ds_msrvtt.json --set "data.ann_dir=$SYN/annotations" \
      --set "data.video_dir=$SYN/videos" --set train.epochs=1 --set "train.output_dir=$OUT/train" ${TRAIN_SET:-}
  fi
else
  echo "SKIP  train      (deepspeed or av not importable: stage them with ../shared/device/stage.sh)" | tee -a "$OUT/steps.txt"
fi

echo "run_all done in $(( $(date +%s) - START ))s; results in $DEST" | tee -a "$OUT/steps.txt"
tar czf "$DEST/gpu_run.tar.gz" --exclude='checkpoints' --exclude='*.pt' -C "$OUT" . 2>/dev/null || true
cp "$OUT/steps.txt" "$DEST/"
find "$OUT" -maxdepth 2 -name '*.json' ! -name 'config.json' | head -n 6 | xargs -r cp -t "$DEST/"
cat "$OUT/steps.txt"
ls "$OUT"/fig5_*.md > /dev/null 2>&1 && tail -n 40 "$OUT"/fig5_*.md
exit 0
