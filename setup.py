"""Builds the `clipbert` package and its kernels.

clipbert._C     C++ op schemas + CPU kernels (always built).
clipbert._cuda  CUDA kernels (built when torch is a CUDA build and an nvcc of the same major version is found
                under CUDA_HOME; CLIPBERT_CUDA=auto|0|1). It prints its decision and the reason.
TORCH_CUDA_ARCH_LIST picks the GPU architectures (default "8.0;9.0+PTX", also when set but empty).
"""

import glob
import os
import re
import subprocess
import tempfile

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# A100 and H100/H200 SASS, plus sm_90 PTX that newer GPUs (Blackwell: sm_100, sm_120) JIT-compile instead of
# failing with "no kernel image"; the PTX cost no build time on 2 cores (94 s with and without, 2026-11-29).
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _sources(*patterns):
    return sorted(os.path.relpath(p, ROOT) for pat in patterns for p in glob.glob(os.path.join(ROOT, pat)))


def _nvcc_version(nvcc):
    """(major, minor) from `nvcc --version`, or None where nvcc is missing or says something else."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
        return tuple(int(v) for v in re.search(r"release (\d+)\.(\d+)", out).groups())
    except (OSError, subprocess.CalledProcessError, AttributeError):
        return None


def _cuda_blockers(torch_version, torch_cuda, nvcc, nvcc_version):
    """Why the CUDA kernels cannot be built here; empty when they can. `torch_cuda` is torch.version.cuda
    (None for a CPU build), `nvcc` the compiler's path (None: no toolkit found), `nvcc_version` its
    (major, minor) or None."""
    blockers = []
    if torch_cuda is None:
        blockers.append(f"torch {torch_version} is not a CUDA build")
    if nvcc is None:
        blockers.append("no CUDA toolkit found (set CUDA_HOME)")
    elif not os.path.isfile(nvcc):
        blockers.append(f"no nvcc at {nvcc}")
    elif nvcc_version is None:
        blockers.append(f"nvcc at {nvcc} did not report its version")
    elif torch_cuda is not None and nvcc_version[0] != int(torch_cuda.split(".")[0]):
        # torch's cpp_extension refuses a different major version, and the kernels would not link anyway
        blockers.append(
            f"nvcc {nvcc_version[0]}.{nvcc_version[1]} at {nvcc} does not match torch's CUDA {torch_cuda} "
            f"(point CUDA_HOME at a CUDA {torch_cuda.split('.')[0]} toolkit)"
        )
    return blockers


def _cuda_flag():
    flag = os.environ.get("CLIPBERT_CUDA", "auto").lower()
    if flag not in ("auto", "0", "1"):
        raise ValueError(f"CLIPBERT_CUDA must be auto, 0 or 1, got {flag!r}")
    return flag


def _want_cuda(cuda_home):
    """Whether to build clipbert._cuda; prints the decision and its reason, raises for CLIPBERT_CUDA=1 when
    the CUDA kernels cannot be built."""
    flag = _cuda_flag()
    if flag == "0":
        print("clipbert: building the CPU kernels only (CLIPBERT_CUDA=0)")
        return False
    import torch

    # CUDA_HOME counts only where nvcc is: torch takes the variable as it is, so a CUDA_HOME set to a missing
    # directory must not make the build fail with 'nvcc not found'.
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else None
    nvcc_version = _nvcc_version(nvcc) if nvcc else None
    blockers = _cuda_blockers(torch.__version__, torch.version.cuda, nvcc, nvcc_version)
    if blockers and flag == "1":
        raise RuntimeError(f"CLIPBERT_CUDA=1 but {'; '.join(blockers)}")
    if blockers:
        print(
            f"clipbert: building the CPU kernels only ({'; '.join(blockers)}); on a GPU the ops then run the "
            "PyTorch reference, or Triton with backend='triton'"
        )
        return False
    print(
        f"clipbert: building the CPU and CUDA kernels (nvcc {'.'.join(map(str, nvcc_version))} at {nvcc}, "
        f"torch {torch.__version__} with CUDA {torch.version.cuda}, CLIPBERT_CUDA={flag})"
    )
    return True


def _cuda_arch_list(value):
    """TORCH_CUDA_ARCH_LIST as the build uses it: unset or blank means the default (torch's own parser fails
    with an IndexError on an empty list)."""
    return value.strip() if value and value.strip() else DEFAULT_CUDA_ARCHS


def _cpu_simd_flags():
    """AVX2+FMA for the C++ kernels when the build machine has them (the extension is built where it runs,
    by `pip install -e .`); CLIPBERT_CPU_SIMD=0 builds plain x86-64 SSE2 code for portable wheels."""
    if os.environ.get("CLIPBERT_CPU_SIMD", "auto") == "0":
        return []
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return ["-mavx2", "-mfma"] if {"avx2", "fma"} <= set(flags) else []


# What -fopenmp and -fopenmp-simd must build: the runtime's header and a library call; a simd reduction loop.
OPENMP_PROBE = "#include <omp.h>\nint probe() { return omp_get_max_threads(); }\n"
OPENMP_SIMD_PROBE = """float probe(const float* v, int n) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; ++i) s += v[i];
  return s;
}
"""


def _openmp_flags():
    """-fopenmp where the C++ compiler that builds the kernels (torch's choice: $CXX, else c++) compiles and
    links with it, else -fopenmp-simd where it has that: at::parallel_for then runs the CPU kernels on one
    thread, with the same results.
    Why probe: Apple's clang (the macOS default) rejects -fopenmp, and an LLVM clang without libomp compiles
    it but cannot link it, so a fixed flag failed the whole install on a Mac laptop.
    Why -fopenmp-simd: it honours the kernels' `#pragma omp simd` loops without the OpenMP runtime. Ignored,
    those loops ran serially: lse_aggregate_nll 4.7x slower on one thread ([64, 16, 4096]: 12.2 ms, not
    2.6 ms), and its sums rounded otherwise than the OpenMP build's vector lanes (now: bit for bit)."""
    from torch.utils.cpp_extension import get_cxx_compiler

    cxx = get_cxx_compiler()
    if _compiles(cxx, ["-fopenmp"], OPENMP_PROBE):
        return ["-fopenmp"]
    print(
        f"clipbert: {cxx} does not build OpenMP code (-fopenmp), so the C++ CPU kernels run on one "
        "thread; for threaded kernels install libomp, or build with GCC (CXX=g++)"
    )
    # -Werror: a compiler that ignores the pragma warns about it
    return ["-fopenmp-simd"] if _compiles(cxx, ["-fopenmp-simd", "-Werror"], OPENMP_SIMD_PROBE) else []


def _compiles(cxx, flags, source):
    """Whether `cxx` compiles and links `source` into a shared library with `flags`."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cpp")
        with open(src, "w") as f:
            f.write(source)
        cmd = [cxx, *flags, "-shared", "-fPIC", src, "-o", os.path.join(tmp, "probe.so")]
        try:
            return subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False


def _nvcc_flags(cuda_home, n_files):
    """-O3 and fast math, plus --split-compile where nvcc has it (11.8 and later) and the cores outnumber the
    .cu files that ninja compiles side by side: cicc and ptxas then optimize one file's kernels on several
    threads (lse_aggregate_kernel.cu alone: 45 s -> 35 s with 2 threads; the sm_90 SASS is the same
    instruction for instruction, checked with cuobjdump on 2026-11-27). On 2 cores it only oversubscribes."""
    flags = ["-O3", "-std=c++20", "--use_fast_math"]
    threads = (os.cpu_count() or 1) // max(n_files, 1)
    if threads < 2:
        return flags
    version = _nvcc_version(os.path.join(cuda_home, "bin", "nvcc"))
    return flags + [f"--split-compile={threads}"] if version and version >= (11, 8) else flags


def _extensions():
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension, library_paths

    cxx = ["-O3", "-std=c++20"]  # torch >= 2.10 headers need C++20
    include = [os.path.join(ROOT, "csrc")]
    # rpath to torch's libs, so `import clipbert._C` works even before `import torch`.
    rpath = [f"-Wl,-rpath,{p}" for p in library_paths()]
    exts = []
    cpu_src = _sources("csrc/ops/*.cpp", "csrc/ops/cpu/*.cpp")
    if cpu_src:
        openmp = _openmp_flags()
        exts.append(
            CppExtension(
                "clipbert._C",
                cpu_src,
                include_dirs=include,
                # -fno-trapping-math lets GCC if-convert the clamps/maxes of the exp loops and vectorize them
                # (5x on CPU); results are unchanged, it only assumes FP exceptions are not trapped.
                extra_compile_args={
                    "cxx": cxx + [*openmp, "-fno-trapping-math", "-fno-math-errno", *_cpu_simd_flags()]
                },
                extra_link_args=[*(["-fopenmp"] if "-fopenmp" in openmp else []), *rpath],  # simd: no runtime
            )
        )
    cuda_src = _sources("csrc/ops/cuda/*.cu", "csrc/ops/cuda/*.cpp")
    if cuda_src and _want_cuda(CUDA_HOME):
        n_cu = sum(p.endswith(".cu") for p in cuda_src)
        os.environ["TORCH_CUDA_ARCH_LIST"] = _cuda_arch_list(os.environ.get("TORCH_CUDA_ARCH_LIST"))
        print(f"clipbert: CUDA architectures {os.environ['TORCH_CUDA_ARCH_LIST']}")
        exts.append(
            CUDAExtension(
                "clipbert._cuda",
                cuda_src,
                include_dirs=include,
                extra_compile_args={"cxx": cxx, "nvcc": _nvcc_flags(CUDA_HOME, n_cu)},
                extra_link_args=rpath,
            )
        )
    return exts


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


# pip's setuptools backend runs this file as __main__ too; the guard lets tests import the helpers above.
if __name__ == "__main__":
    setup(
        name="clipbert",
        version="0.1.0",
        description=(
            "ClipBERT: video-and-language learning via sparse sampling, with fused kernels and DeepSpeed"
        ),
        # configs/ ships as clipbert/configs (data only), so that a wheel finds a bare config name too
        # (clipbert/train/config.py) and `python -m clipbert.demo` runs: a checkout keeps its own configs/.
        packages=[
            *find_packages(include=["clipbert", "clipbert.*", "dali_pipelines", "dali_pipelines.*"]),
            "clipbert.configs",
        ],
        package_dir={"clipbert.configs": "configs"},
        package_data={"clipbert": ["assets/*"], "clipbert.configs": ["*.json"]},
        python_requires=">=3.11",
        install_requires=[
            "torch>=2.4",
            "torchvision>=0.19",
            "transformers>=4.40",
            "deepspeed>=0.14",
            "h5py>=3.8",
            "av>=12",
            "numpy>=1.24",
            "pillow>=9",
            "tqdm>=4.60",
        ],
        extras_require={
            "dali": ["nvidia-dali-cuda130>=1.40"],
            "triton": ["triton>=3.0"],
            "plots": ["matplotlib>=3.6", "tensorboard>=2.12"],
        },
        ext_modules=_extensions(),
        cmdclass=_cmdclass(),
        zip_safe=False,
    )
