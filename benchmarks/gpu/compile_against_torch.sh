#!/usr/bin/env bash
# Compile (not link) every C++ and CUDA source of the extension against another torch release's headers.
#
# Why: the GPU machine runs its own torch (2.11.0+cu130 so far), while this machine builds against the pinned
# torch==2.14.1. A header that one release has and the other lacks breaks the GPU session's `build` step, and
# with it every later step of that call, so check before spending device time. Headers come from the release's
# PyPI wheel (downloaded once, only torch/include extracted); compile flags follow what setup.py gives
# torch.utils.cpp_extension (sm_90 only).
#
#   bash benchmarks/gpu/compile_against_torch.sh 2.11.0        # about 4 minutes on 2 cores
set -euo pipefail
VERSION=${1:?usage: compile_against_torch.sh TORCH_VERSION}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda-13.0}
CACHE=${CACHE:-$ROOT/.torch_headers}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

HEADERS=$CACHE/$VERSION
if [[ ! -d $HEADERS/torch/include ]]; then
  mkdir -p "$HEADERS"
  "$PY" -m pip download -q --no-deps "torch==$VERSION" -d "$WORK/wheel"
  "$PY" - "$WORK"/wheel/torch-*.whl "$HEADERS" <<'EOF'
import sys, zipfile
wheel, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    z.extractall(out, members=[n for n in z.namelist() if n.startswith("torch/include/")])
EOF
fi
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
PYINC=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
INC=(-I"$ROOT/csrc" -I"$HEADERS/torch/include" -I"$HEADERS/torch/include/torch/csrc/api/include"
     -I"$CUDA_HOME/include" -I"$SITE/nvidia/cu13/include" -I"$PYINC")
CXX_FLAGS=(-O1 -std=c++20 -fPIC -fopenmp -DTORCH_API_INCLUDE_EXTENSION_H)
NVCC_FLAGS=(-O1 -std=c++20 --use_fast_math --expt-relaxed-constexpr --compiler-options -fPIC
  -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__
  -D__CUDA_NO_HALF2_OPERATORS__ -DTORCH_API_INCLUDE_EXTENSION_H -gencode=arch=compute_90,code=sm_90)

compile() {  # one source: OK or FAIL with the time, and its errors on failure
  local src=$1 log=$WORK/$(basename "$1").log start=$SECONDS
  if [[ $src == *.cu ]]; then
    "$CUDA_HOME/bin/nvcc" "${INC[@]}" "${NVCC_FLAGS[@]}" -DTORCH_EXTENSION_NAME=_cuda -c "$src" -o /dev/null >"$log" 2>&1
  else
    local name=_C
    [[ $src == */cuda/* ]] && name=_cuda
    g++ "${INC[@]}" "${CXX_FLAGS[@]}" -DTORCH_EXTENSION_NAME=$name -c "$src" -o /dev/null >"$log" 2>&1
  fi && echo "OK    $(( SECONDS - start ))s  ${src#"$ROOT"/}" || { echo "FAIL  ${src#"$ROOT"/}"; head -40 "$log"; }
}

mapfile -t SOURCES < <(ls "$ROOT"/csrc/ops/*.cpp "$ROOT"/csrc/ops/cpu/*.cpp "$ROOT"/csrc/ops/cuda/*.cpp \
  "$ROOT"/csrc/ops/cuda/*.cu)
echo "torch $VERSION headers: $HEADERS ($(nproc) cores, ${#SOURCES[@]} sources)"
for src in "${SOURCES[@]}"; do
  compile "$src" | tee -a "$WORK/results" &
  while (( $(jobs -rp | wc -l) >= $(nproc) )); do wait -n || true; done
done
wait
if grep -q '^FAIL' "$WORK/results"; then
  echo "some sources do not compile against torch $VERSION"
  exit 1
fi
echo "every source compiles against torch $VERSION"
