"""setup.py's CUDA decision: a laptop without the CUDA toolkit still installs (CPU kernels only)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL_CUDA_HOME = "/usr/local/cuda-13.0"


def _setup_py(cuda_home: str, flag: str) -> subprocess.CompletedProcess:
    # `--name` evaluates setup()'s arguments, the extension list included, and builds nothing
    env = {**os.environ, "CUDA_HOME": cuda_home, "CLIPBERT_CUDA": flag}
    return subprocess.run(
        [sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_a_cuda_home_without_nvcc_builds_the_cpu_kernels_only(tmp_path):
    # The Makefile's CUDA_HOME default is absent on most laptops, and torch takes the variable as it is.
    missing = tmp_path / "no-cuda"
    auto = _setup_py(str(missing), "auto")
    assert auto.returncode == 0, auto.stderr
    assert "building the CPU kernels only" in auto.stdout and f"no nvcc at {missing}/bin/nvcc" in auto.stdout
    forced = _setup_py(str(missing), "1")
    assert forced.returncode != 0
    assert "CLIPBERT_CUDA=1 but" in forced.stderr and f"no nvcc at {missing}/bin/nvcc" in forced.stderr


@pytest.mark.skipif(not Path(REAL_CUDA_HOME, "bin", "nvcc").is_file(), reason="no CUDA toolkit here")
def test_a_cuda_home_with_nvcc_builds_the_cuda_kernels():
    auto = _setup_py(REAL_CUDA_HOME, "auto")
    assert auto.returncode == 0, auto.stderr
    assert "CPU kernels only" not in auto.stdout
