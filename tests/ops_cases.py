"""What the kernel tests share: the backends to run here and inputs that several ops are tested on."""

import importlib.util

import pytest
import torch

from clipbert import ops

# The C++ CPU kernel when it was built, Triton where it is installed (under TRITON_INTERPRET=1 on a CPU; it
# has no macOS wheel) and the reference; CUDA as a parameter that skips without a GPU.
HAS_TRITON = importlib.util.find_spec("triton") is not None
CPU_BACKENDS = [
    b
    for b in ("cpu", "triton", "reference")
    if (b != "cpu" or ops.native_available("cpu")) and (b != "triton" or HAS_TRITON)
]
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (it has no macOS wheel)")
TRITON = pytest.param("triton", marks=needs_triton)
CUDA = pytest.param("cuda", marks=pytest.mark.needs_cuda)


def device_for(backend: str) -> str:
    return "cuda" if backend == "cuda" else "cpu"


def extreme_logits(backend: str, dtype: torch.dtype) -> torch.Tensor:
    """[3, 4, 5] logits of magnitude up to 1e4: a scaled row, one huge clip, a row of very negative values."""
    x = torch.randn(3, 4, 5, device=device_for(backend))
    x[0] *= 1e4
    x[1, 0] = 1e4
    x[2] = -1e4
    return x.to(dtype)
