"""Review of the portability changes (session 26): a build without OpenMP, and what a run leaves behind in
the caller's process."""

import os
import subprocess
from pathlib import Path

import pytest
import torch
from test_build import _compiler_without_openmp

ROOT = Path(__file__).resolve().parents[1]

# The kernels' pattern (csrc/ops/cpu/lse_aggregate_kernel.cpp: contiguous_lse): a float sum that
# `omp simd reduction` splits into vector lanes; a plain serial sum rounds otherwise.
SIMD_SUM = """#include <cstdio>
int main() {
  static float v[100003];
  unsigned x = 1;
  for (float& e : v) { x = x * 1103515245u + 12345u; e = ((x >> 8) % 10000) / 1000.0f; }
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < 100003; ++i) s += v[i];
  std::printf("%.9g\\n", s);
}
"""


def _sum(tmp_path, name: str, flags: list[str]) -> str:
    """SIMD_SUM built by c++ with `flags` (the kernels' compile flags), run: its printed sum."""
    src, exe = tmp_path / "sum.cpp", tmp_path / name
    src.write_text(SIMD_SUM)
    subprocess.run(["c++", *flags, str(src), "-o", str(exe)], check=True, capture_output=True, timeout=60)
    return subprocess.run([str(exe)], capture_output=True, text=True, check=True, timeout=60).stdout


def test_without_openmp_the_kernels_simd_sums_round_as_the_openmp_build(setup_py, tmp_path, monkeypatch):
    # Before: without -fopenmp the build passed no OpenMP flag at all, so the kernels' `omp simd reduction`
    # loops were serial sums: slower, and rounded otherwise than the OpenMP build (README: "same results").
    monkeypatch.setenv("CLIPBERT_CUDA", "0")
    monkeypatch.setenv("CXX", str(_compiler_without_openmp(tmp_path)))
    (ext,) = setup_py._extensions()
    flags = ext.extra_compile_args["cxx"]
    assert "-fopenmp" not in flags + ext.extra_link_args
    try:
        with_openmp = _sum(
            tmp_path, "with", [f for f in flags if not f.startswith("-fopenmp")] + ["-fopenmp"]
        )
    except subprocess.CalledProcessError:
        pytest.skip("c++ builds no OpenMP code here (Apple's clang): no OpenMP build to compare with")
    assert _sum(tmp_path, "without", flags) == with_openmp


def test_a_compiler_without_openmp_simd_gets_no_openmp_flag(setup_py, tmp_path, monkeypatch):
    fake = tmp_path / "old++"  # knows neither flag
    fake.write_text(
        '#!/bin/sh\nfor a in "$@"; do case "$a" in -fopenmp*) exit 1;; esac; done\nexec c++ "$@"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    assert setup_py._openmp_flags() == []


def test_aligning_deepspeeds_accelerator_leaves_ds_accelerator_unset(monkeypatch):
    # A CPU run beside a GPU (or MPS on a Mac): DeepSpeed detected CUDA, the run switches it to the CPU.
    # Before: the run also set DS_ACCELERATOR=cpu in os.environ, which outlived it, so a later `deepspeed`
    # launch from the same notebook or test session counted NUMA nodes as its devices instead of its GPUs.
    from deepspeed.accelerator import get_accelerator, real_accelerator
    from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator

    from clipbert.train.engine import align_accelerator

    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    monkeypatch.setattr(real_accelerator, "ds_accelerator", CUDA_Accelerator())  # restored after the test
    align_accelerator(torch.device("cpu"))
    assert get_accelerator().device_name() == "cpu"
    assert "DS_ACCELERATOR" not in os.environ
