"""Fused clip ops: LogSumExp clip aggregation (+ fused NLL) and temporal mean-pooling.

Backends: compiled CUDA (clipbert._cuda) and C++ (clipbert._C) kernels, Triton kernels and pure-PyTorch
references; see `set_backend`. Autograd is in C++ (csrc/ops/autograd.cpp) for the compiled ops and in
`_registry` for the Triton ones; fake kernels are in `_registry`.
"""

from clipbert.ops import _backend, _registry
from clipbert.ops._backend import (
    BACKENDS,
    NLL_KERNELS,
    get_backend,
    get_nll_kernel,
    native_available,
    set_backend,
    set_nll_kernel,
)
from clipbert.ops.lse import (
    clip_aggregate,
    lse_aggregate,
    lse_aggregate_nll,
    lse_aggregate_nll_value_and_grad,
)
from clipbert.ops.reference import (
    clip_aggregate_reference,
    lse_aggregate_nll_reference,
    lse_aggregate_nll_value_and_grad_reference,
    lse_aggregate_reference,
    temporal_mean_reference,
)
from clipbert.ops.temporal import temporal_mean

# clipbert._C defines the clipbert:: ops and their autograd (the CUDA kernels, loaded lazily, join the same
# ops), so fakes are registered once here for every device.
if _backend.native_available("cpu"):
    _registry.register("clipbert")

__all__ = [
    "BACKENDS",
    "NLL_KERNELS",
    "clip_aggregate",
    "clip_aggregate_reference",
    "get_backend",
    "get_nll_kernel",
    "lse_aggregate",
    "lse_aggregate_nll",
    "lse_aggregate_nll_reference",
    "lse_aggregate_nll_value_and_grad",
    "lse_aggregate_nll_value_and_grad_reference",
    "lse_aggregate_reference",
    "native_available",
    "set_backend",
    "set_nll_kernel",
    "temporal_mean",
    "temporal_mean_reference",
]
