#!/usr/bin/env bash
# Source on the GPU machine after `bash .carryK/unpack.sh`: installs the wheels that have fully arrived so far
# (unpack.sh joins and checks each wheel as soon as its last part is in, but installs nothing until every
# wheel is there). repack_carry.py puts DeepSpeed, its dependencies and PyAV whole in .carry1, so the first
# device call can already run the `train` step while DALI's parts are still travelling.
#
#   bash .carry1/unpack.sh; source benchmarks/gpu/early_install.sh; RUN_STEPS="env build train" bash benchmarks/gpu/run_all.sh
_early=/tmp/site_early
if ls /root/carry/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$_early" \
    /root/carry/*.whl && echo "early_install: $(ls /root/carry/*.whl | xargs -n1 basename | tr '\n' ' ')"
  export PYTHONPATH=$_early${PYTHONPATH:+:$PYTHONPATH} PATH=$_early/bin:$PATH
else
  echo "early_install: no whole wheel in /root/carry yet"
fi
