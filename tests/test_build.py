"""setup.py's CUDA decision: a laptop without the CUDA toolkit still installs (CPU kernels only), and a
toolkit that torch cannot use is skipped with the reason. The Makefile and setup.py agree on defaults."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
REAL_CUDA_HOME = "/usr/local/cuda-13.0"


def _makefile_var(name: str) -> str:
    match = re.search(rf"^{name} [:?]?= *(.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, f"{name} not set in the Makefile"
    return match.group(1).strip()


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
@pytest.mark.skipif(torch.version.cuda is None, reason=f"torch {torch.__version__} is not a CUDA build")
def test_a_cuda_home_with_nvcc_builds_the_cuda_kernels():
    auto = _setup_py(REAL_CUDA_HOME, "auto")
    assert auto.returncode == 0, auto.stderr
    assert "CPU kernels only" not in auto.stdout
    assert "building the CPU and CUDA kernels (nvcc " in auto.stdout


def test_a_blank_arch_list_means_the_default(setup_py):
    # torch's own parser takes a blank TORCH_CUDA_ARCH_LIST for "the visible GPUs" and, with none, fails
    # with an IndexError
    for blank in (None, "", "  "):
        assert setup_py._cuda_arch_list(blank) == setup_py.DEFAULT_CUDA_ARCHS
    assert setup_py._cuda_arch_list(" 9.0 ") == "9.0"
    assert setup_py.DEFAULT_CUDA_ARCHS.endswith("+PTX")  # newer GPUs JIT the PTX of the last arch


def test_cuda_is_skipped_with_the_reason_where_torch_cannot_use_the_toolkit(setup_py, tmp_path):
    nvcc = tmp_path / "nvcc"
    nvcc.write_text("#!/bin/sh\n")
    assert setup_py._cuda_blockers("2.14.1", "13.0", str(nvcc), (13, 2)) == []
    (mismatch,) = setup_py._cuda_blockers("2.14.1", "13.0", str(nvcc), (12, 8))
    assert f"nvcc 12.8 at {nvcc} does not match torch's CUDA 13.0" in mismatch
    assert setup_py._cuda_blockers("2.14.1+cpu", None, str(nvcc), (12, 8)) == [
        "torch 2.14.1+cpu is not a CUDA build"
    ]
    assert setup_py._cuda_blockers("2.14.1", "13.0", None, None) == ["no CUDA toolkit found (set CUDA_HOME)"]
    missing = str(tmp_path / "x")
    assert setup_py._cuda_blockers("2.14.1", "13.0", missing, None) == [f"no nvcc at {missing}"]
    assert "did not report its version" in setup_py._cuda_blockers("2.14.1", "13.0", str(nvcc), None)[0]


def test_cuda_forced_on_a_mismatched_toolkit_is_an_error(setup_py, tmp_path, monkeypatch, capsys):
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 11.8, V11.8.89'\n")
    nvcc.chmod(0o755)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setenv("CLIPBERT_CUDA", "auto")
    assert setup_py._want_cuda(str(tmp_path)) is False
    assert "CPU kernels only (nvcc 11.8 at" in capsys.readouterr().out
    monkeypatch.setenv("CLIPBERT_CUDA", "1")
    with pytest.raises(RuntimeError, match=r"CLIPBERT_CUDA=1 but nvcc 11\.8 .* not match torch's CUDA 13\.0"):
        setup_py._want_cuda(str(tmp_path))


def test_the_makefile_and_setup_py_agree(setup_py):
    assert _makefile_var("TORCH_CUDA_ARCH_LIST") == setup_py.DEFAULT_CUDA_ARCHS
    need = re.search(r'python_requires=">=([\d.]+)"', (ROOT / "setup.py").read_text()).group(1)
    assert _makefile_var("PY_MIN") == need
    assert sys.version_info >= tuple(map(int, need.split(".")))


def _compiler_without_openmp(tmp_path) -> Path:
    """A stand-in for Apple's clang: it rejects -fopenmp as that one does and compiles everything else."""
    fake = tmp_path / "clang++"
    fake.write_text(
        '#!/bin/sh\nfor a in "$@"; do if [ "$a" = -fopenmp ]; then\n'
        '  echo "clang: error: unsupported option \'-fopenmp\'" >&2; exit 1; fi; done\nexec c++ "$@"\n'
    )
    fake.chmod(0o755)
    return fake


def test_a_compiler_without_openmp_still_builds_the_cpu_kernels(setup_py, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLIPBERT_CUDA", "0")
    if sys.platform.startswith("linux"):  # GCC, Linux's c++, has OpenMP; Apple's clang has not
        monkeypatch.setenv("CXX", "c++")
        assert setup_py._openmp_flags() == ["-fopenmp"]
    monkeypatch.setenv("CXX", str(_compiler_without_openmp(tmp_path)))
    (ext,) = setup_py._extensions()
    assert ext.name == "clipbert._C"
    assert "-fopenmp" not in ext.extra_compile_args["cxx"] + ext.extra_link_args
    assert "does not build OpenMP code" in capsys.readouterr().out
