#!/usr/bin/env bash
# Run CPU tests of a clean checkout under another torch release (the GPU machine's), without touching .venv.
#
# Why: the GPU machine runs torch 2.11.0+cu130 with triton 3.6.0, this machine the pinned 2.14.1 with
# triton 3.8. Python APIs the optimized paths use (custom ops with autograd, torch.compile of the whole loss,
# autocast queries) differ between releases, and a step that fails there costs device time. This makes a
# throwaway venv with that torch, torchvision and triton (no dependencies: everything else comes from .venv
# through a .pth file placed after them), clones HEAD, builds the CPU extension against that torch and runs
# the given tests (by default the optimized paths', the CPU kernels' and the compiled trainer's).
#
#   bash benchmarks/gpu/test_against_torch.sh 2.11.0 0.26.0 3.6.0 [pytest args]   # about 8 minutes on 2 cores
set -euo pipefail
TORCH=${1:?usage: test_against_torch.sh TORCH TORCHVISION TRITON [pytest args]}
VISION=${2:?torchvision version}
TRITON=${3:?triton version}
shift 3
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${VENV:-/tmp/clipbert_torch_$TORCH}
SRC=${SRC:-/tmp/clipbert_torch_${TORCH}_src}
MAIN_SITE=$("$ROOT/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
BASE_PY=$("$ROOT/.venv/bin/python" -c 'import sys; print(sys._base_executable)')

if [[ ! -x $VENV/bin/python ]]; then
  "$BASE_PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --no-deps "torch==$TORCH" "torchvision==$VISION" "triton==$TRITON"
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$MAIN_SITE" >"$site/zz_clipbert_main_venv.pth"  # after the venv's own packages: its torch wins
fi
"$VENV/bin/python" -c 'import torch, torchvision, triton; print("torch", torch.__version__, "torchvision",
  torchvision.__version__, "triton", triton.__version__)'

rm -rf "$SRC"
git clone -q "$ROOT" "$SRC"
cd "$SRC"
CLIPBERT_CUDA=0 MAX_JOBS=$(nproc) "$VENV/bin/python" setup.py -q build_ext --inplace >build.log 2>&1 \
  || { tail -30 build.log; exit 1; }
if (( $# == 0 )); then
  set -- tests/test_perf_trainable_fuse.py tests/test_perf_frozen_fuse.py tests/test_perf_stem.py \
    tests/test_bench_paths.py tests/test_ops_lse.py tests/test_ops_temporal_mean.py tests/test_ops_dispatch.py \
    tests/test_train_loop.py tests/test_model.py -k "not triton and (not test_train_loop or compile or channels)"
fi
# pyproject's addopts has -q already; -rfE lists failures and errors, and the summary line says the counts.
"$VENV/bin/python" -m pytest -p no:cacheprovider -o addopts="--timeout=600" -q -rfE "$@"
