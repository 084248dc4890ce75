#!/usr/bin/env bash
# Every GPU measurement of the project, in one call or split over several (RUN_STEPS), on the H100/H200:
#   env       card, driver, torch, what is importable                     -> env.log
#   build     the extension against that machine's torch (sm_90)          -> build.log
#   tests     pytest -m needs_cuda over tests/                            -> tests.log
#   ops       benchmarks/bench_ops.py --device cuda                       -> ops_cuda.json
#   ncu       Nsight Compute on the NLL kernels at [4096,16,1540] (not in the default steps) -> ncu_lse.csv
#   fig5      benchmarks/memory_vs_ntrain.py, panels FIG5_PANELS, time-budgeted -> fig5_<card>.{json,csv,md,png}
#   ablation  the same script: the cumulative optimization steps at Ntrain=16 + the profile -> fig5_<card>_ablation.*
#   nvdec     benchmarks/gpu/nvdec_diagnose.py: the frames NVDEC returns for H.264, seek cost -> nvdec_diagnose.json
#   data      benchmarks/bench_data.py --device cuda         (only when DALI and PyAV import) -> data_cuda.json
#   train     a ds_msrvtt.json-shaped run on synthetic MSRVTT-format data (deepspeed + PyAV) -> train_<card>.json
#             and train_<card>_profile.md (three steps from its middle, phase by phase: train.profile_steps)
#             (DeepSpeed and PyAV arrive whole in .carry1: benchmarks/gpu/early_install.sh installs them)
# Each step has its own timeout, and the whole run a deadline, so one failure or hang does not lose the rest;
# the Figure-5 script also rewrites <tag>.partial.json after every point, so a timeout keeps what it measured.
#
#   bash benchmarks/gpu/run_all.sh                          # everything, on the GPU machine
#   RUN_STEPS="env build tests ops" bash benchmarks/gpu/run_all.sh   # a subset (one device call each, when
#                                     the carried wheels need several calls: docs/PERFORMANCE.md)
#   bash benchmarks/gpu/run_all.sh --dry-run                # on a CPU machine: the same steps, tiny and quick
# RUN_DIR (default /tmp/clipbert_gpu_run) is the work folder; $OUT (or benchmarks/results/gpu_run, or
# /tmp/clipbert_gpu_dryrun for a dry run) gets gpu_run.tar.gz with every log, steps.txt and the JSONs.
# CLIPBERT_GPU_DRY_RUN=1 is the same as --dry-run. RUN_ALL_BUDGET_S (default 530) is the whole-run deadline.
# Step knobs: FIG5_BUDGET_S (200), FIG5_PANELS (abcd), FIG5_PATHS ("eager optimized"), FIG5_NTRAIN and FIG5_FRAMES ("1 2 4 8 16"),
# ABLATION_BUDGET_S (100), ABLATION_STEPS (default: every step of the ladder; eager always runs),
# ABLATION_PROFILE (default --profile; set it to " " to skip the profile),
# TESTS (test paths for the tests step; default: the kernels' tests, then every other needs_cuda test),
# DATA_ARGS (bench_data.py flags), DATA_ONLY (its --only: comma list of variant prefixes), DATA_LIMIT_S (150), TRAIN_STEPS (300), TRAIN_SET (extra --set flags).
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
STEPS=" ${RUN_STEPS:-env build tests ops fig5 ablation nvdec data train} "
want() { [[ $STEPS == *" $1 "* ]]; }
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

# env
want env && step env 30 bash -c "date -u; nvidia-smi || true; \"$PY\" -c 'import torch, sys; print(sys.version); print(torch.__version__, torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())'; \
  for m in triton transformers deepspeed nvidia.dali av; do \"$PY\" -c \"import \$m; print('\$m', getattr(\$m, '__version__', '?'))\" 2>/dev/null || echo \"\$m: not importable\"; done"

# build: against the machine's torch; CLIPBERT_CUDA=1 fails loudly if nvcc is missing.
if ! want build; then :
elif [[ $DRY == 1 ]]; then
  step build 60 "$PY" -c "import clipbert, clipbert.ops; print('package imports; dry run does not rebuild')"
else
  step build 180 env CLIPBERT_CUDA=1 MAX_JOBS=16 "$PY" -m pip install --no-build-isolation --no-deps -e .
fi

# CUDA op tests
if ! want tests; then :
elif [[ $DRY == 1 ]]; then
  step tests 60 "$PY" -m pytest -m needs_cuda tests/ --collect-only
else
  # The kernels' tests first (seconds), then the model's inductor test and DALI's (slower); -rfE lists failures.
  OPS_TESTS="tests/test_ops_lse.py tests/test_ops_lse_value_and_grad.py tests/test_ops_nll_kernels.py tests/test_ops_nonfinite.py tests/test_ops_adversarial.py tests/test_ops_temporal_mean.py tests/test_ops_triton_gpu.py"
  if [[ -n ${TESTS:-} ]]; then  # a chosen subset, e.g. the DALI tests once DALI's wheels are in
    # shellcheck disable=SC2086  # TESTS is a list of test paths
    step tests 120 "$PY" -m pytest -m needs_cuda $TESTS -p no:cacheprovider -rfE --tb=short
  else
    step tests 120 bash -c "\"$PY\" -m pytest -m needs_cuda $OPS_TESTS -p no:cacheprovider -rfE --tb=short; a=\$?; \
      \"$PY\" -m pytest -m needs_cuda tests/ ${OPS_TESTS//tests\//--ignore=tests/} -p no:cacheprovider -rfE --tb=short; \
      exit \$(( a || \$? ))"
  fi
fi

# fused-op benchmark
if ! want ops; then :
elif [[ $DRY == 1 ]]; then
  step ops 30 "$PY" benchmarks/bench_ops.py --help
else
  step ops 60 "$PY" benchmarks/bench_ops.py --device cuda --out "$OUT/ops_cuda.json"
fi

# Nsight Compute on the NLL kernels at [4096, 16, 1540] (ncu_lse.py says why): the reasons behind ops' copy %.
if ! want ncu; then :
elif [[ $DRY == 1 ]]; then
  step ncu 30 "$PY" benchmarks/gpu/ncu_lse.py --help
elif command -v ncu > /dev/null; then
  step ncu 120 bash -c "ncu --kernel-name regex:nll --launch-skip 3 --launch-count 9 --section SpeedOfLight \
    --section Occupancy --section LaunchStats --section WarpStateStats --csv \"$PY\" benchmarks/gpu/ncu_lse.py \
    > \"$OUT/ncu_lse.csv\""
else
  echo "SKIP  ncu        (Nsight Compute's ncu is not on PATH)" | tee -a "$OUT/steps.txt"
fi

# Figure 5: the searches stop at the script's own budget; the step's timeout leaves it room to write its files.
CARD=nogpu
[[ $DRY == 1 ]] || CARD=$("$PY" -c "import torch; from clipbert.perf.devices import card_slug; print(card_slug(torch.cuda.get_device_name()) if torch.cuda.is_available() else 'nogpu')" 2>/dev/null | tr -cd 'a-z0-9')
if ! want fig5; then :
elif [[ $DRY == 1 ]]; then
  step fig5 120 "$PY" benchmarks/memory_vs_ntrain.py --device cpu --small --no-compile --ntrain 1 4 --frames 2 \
    --steps 2 --warmup 1 --time-batch 2 --threads 1 --out-dir "$OUT" --tag fig5_dryrun
else
  FIG5_S=${FIG5_BUDGET_S:-200} PANELS=${FIG5_PANELS:-abcd}
  # A subset of panels gets its own tag (fig5_h100_bd, ...): `memory_vs_ntrain.py --merge` joins the calls.
  TAG=fig5_${CARD:-gpu}; [[ $PANELS == abcd ]] || TAG=${TAG}_$PANELS
  # shellcheck disable=SC2086  # FIG5_NTRAIN and FIG5_FRAMES are lists of numbers
  step fig5 $(( FIG5_S + 60 )) "$PY" benchmarks/memory_vs_ntrain.py --device cuda --time-budget-s "$FIG5_S" \
    --mem-cap-gib 32 --panels "$PANELS" --paths ${FIG5_PATHS:-eager optimized} \
    --ntrain ${FIG5_NTRAIN:-1 2 4 8 16} --frames ${FIG5_FRAMES:-1 2 4 8 16} \
    --out-dir "$OUT" --tag "$TAG"
fi
# The ablation ladder and the profile, on their own: no panel, so no path is built for one.
if ! want ablation; then :
elif [[ $DRY == 1 ]]; then
  step ablation 120 "$PY" benchmarks/memory_vs_ntrain.py --device cpu --small --no-compile --panels= --ntrain 1 4 \
    --steps 2 --warmup 1 --time-batch 2 --threads 1 --ablation --profile --out-dir "$OUT" --tag fig5_dryrun_ablation
else
  ABL_S=${ABLATION_BUDGET_S:-100}
  # shellcheck disable=SC2086  # ABLATION_STEPS is a list of step names
  step ablation $(( ABL_S + 60 )) "$PY" benchmarks/memory_vs_ntrain.py --device cuda --time-budget-s "$ABL_S" \
    --panels= --ablation ${ABLATION_STEPS:+--ablation-steps $ABLATION_STEPS} ${ABLATION_PROFILE:---profile} \
    --out-dir "$OUT" --tag "fig5_${CARD:-gpu}_ablation"
fi

# Which frames NVDEC returns for H.264 (the DALI GPU loader test differed from PyAV on the second H100 run), and
# what a frame costs against its position (seek check). Before `data`: short, and it explains the data rows.
if ! want nvdec; then :
elif [[ $DRY == 1 ]]; then
  echo "SKIP  nvdec      (needs NVDEC: GPU only)" | tee -a "$OUT/steps.txt"
elif has nvidia.dali && has av; then
  step nvdec 90 "$PY" benchmarks/gpu/nvdec_diagnose.py --out "$OUT/nvdec_diagnose.json"
else
  echo "SKIP  nvdec      (nvidia.dali or av not importable)" | tee -a "$OUT/steps.txt"
fi

# data pipeline (DALI GPU decoding): only with the carried wheels (docs/PERFORMANCE.md says how).
if ! want data; then :
elif has nvidia.dali && has av; then
  if [[ $DRY == 1 ]]; then  # the same benchmark, tiny: PyAV, the frame store and DALI on the CPU
    step data 90 "$PY" benchmarks/bench_data.py --device cpu --out "$OUT/data_dryrun.json" --num-videos 2 \
      --seconds 2 --batches 2 --batch-size 2 --size 64 --workers 0 --dali-pipelines 1 --dali-pack 1,2
  else
    # shellcheck disable=SC2086  # DATA_ARGS is a list of flags; DATA_ONLY (variant prefixes) may hold spaces
    step data "${DATA_LIMIT_S:-150}" "$PY" benchmarks/bench_data.py --device cuda --out "$OUT/data_cuda.json" \
      ${DATA_ARGS:---workers 16 --dali-pipelines 1,2 --dali-processes 4 --dali-trim on,off --dali-pack 1,8 --batches 10} \
      ${DATA_ONLY:+--only "$DATA_ONLY"}
  fi
else
  echo "SKIP  data       (nvidia.dali or av not importable: stage them with ../shared/device/stage.sh)" | tee -a "$OUT/steps.txt"
fi

# A ds_msrvtt.json-shaped DeepSpeed run (base, L=448, ZeRO-2, bf16) on synthetic MSRVTT-format data read
# from a 2 fps frame store (the paper samples at 2 fps), decoded by DALI on the GPU, or by the workers on the
# CPU before DALI's wheels have arrived (early_install.sh); its perf.json, which names the reader, is kept.
if ! want train; then :
elif has deepspeed && has av; then
  SYN=${SYN_DIR:-/tmp/clipbert_syn}
  READER=cpu; has nvidia.dali && READER=dali
  # The dry run makes the same calls at the tiny preset on the CPU (gloo, fp32, the frame store read by DALI on
  # the CPU), so a broken synth, store build or trainer flag shows here before it costs device time.
  if [[ $DRY == 1 ]]; then
    GEN="--size tiny --workers 2" STORE_WORKERS=2 N=${TRAIN_STEPS:-3}
    TINY="--set model.preset=tiny --set data.image_size=64 --set data.num_test_clips=2 --set data.num_workers=1
      --set train.batch_size=2 --set eval.batch_size=2 --set deepspeed.bf16.enabled=false --set train.device=cpu"
  else
    GEN="--workers 16" STORE_WORKERS=16 N=${TRAIN_STEPS:-300} TINY=""
  fi
  rm -rf "$SYN"
  step synth 60 bash -c "\"$PY\" -m clipbert.data.synthetic --out $SYN $GEN && \
    \"$PY\" -m clipbert.data.build_frame_store --videos $SYN/videos --fps 2 --out $SYN/frames.h5 --workers $STORE_WORKERS"
  # Three steps from the middle of the run are timed phase by phase (train.profile_steps): where the run's
  # time goes next to Figure 5's step (perf.json's step_profile; the tables in train_<card>_profile.md).
  PROFILE_AT=$(( N / 2 > 1 ? N / 2 : 1 ))
  # shellcheck disable=SC2086  # TINY and TRAIN_SET are lists of --set flags
  step train 240 "$PY" train.py --config ds_msrvtt.json --set "data.ann_dir=$SYN/annotations" \
    --set data.backend=frame_store --set "data.frame_store=$SYN/frames.h5" --set data.frame_store_reader=$READER \
    --set train.max_steps=$N --set train.save_every=$N --set train.eval_every=-1 --set train.log_every=20 \
    --set train.profile_start=$PROFILE_AT --set train.profile_steps=3 \
    --set train.progress_bar=false --set "train.output_dir=$OUT/train" $TINY ${TRAIN_SET:-}
  cp "$OUT/train/perf.json" "$OUT/train_${CARD:-gpu}.json" 2>/dev/null || true
  cp "$OUT/train/profile/step_profile_rank0.md" "$OUT/train_${CARD:-gpu}_profile.md" 2>/dev/null || true
else
  echo "SKIP  train      (deepspeed or av not importable: stage them with ../shared/device/stage.sh)" | tee -a "$OUT/steps.txt"
fi

echo "run_all done in $(( $(date +%s) - START ))s; results in $DEST" | tee -a "$OUT/steps.txt"
# The trainer's profiler trace is left out too: tens of MB for the base model, and the tables say what it shows.
tar czf "$DEST/gpu_run.tar.gz" --exclude='checkpoints' --exclude='model' --exclude='*.pt' --exclude='*.safetensors' \
  --exclude='trace_rank*.json' -C "$OUT" . 2>/dev/null || true
cp "$OUT/steps.txt" "$DEST/"
# Complete results first: a step stopped by its budget leaves <tag>.partial.json beside them (the tarball has all)
{ find "$OUT" -maxdepth 1 -name '*.json' ! -name '*.partial.json' | sort
  find "$OUT" -maxdepth 1 -name '*.partial.json' | sort; } | head -n 6 | xargs -r cp -t "$DEST/"
cat "$OUT/steps.txt"
ls "$OUT"/fig5_*.md > /dev/null 2>&1 && tail -n 40 "$OUT"/fig5_*.md
exit 0
