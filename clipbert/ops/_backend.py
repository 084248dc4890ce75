"""Backend selection for the clip ops: which implementation runs for a given tensor.

Backends: "cuda" (compiled CUDA kernels, clipbert._cuda), "cpu" (compiled C++ kernels, clipbert._C),
"triton" (clipbert/ops/triton; on CPU tensors only under TRITON_INTERPRET=1) and "reference" (pure PyTorch).
"auto" picks the compiled kernel for the tensor's device and falls back to the reference, with one warning,
when that kernel was not built.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import warnings

import torch

BACKENDS = ("auto", "cuda", "triton", "cpu", "reference")

# How the CUDA NLL kernels (lse_aggregate_nll, its backward, the value-and-grad op) stream a row; see
# NllKernel in csrc/ops/cuda/lse_common.cuh. "stream2"/"stream4": 2 or 4 loads in flight per thread;
# "resident": each row held in registers where it fits; "auto": the forward and backward as "stream2" (the
# H100-measured kernels), the value-and-grad op resident. The environment's CLIPBERT_NLL_KERNEL sets the
# start value, so a GPU run can pick one without code.
NLL_KERNELS = ("auto", "stream2", "stream4", "resident")
NLL_KERNEL_ENV = "CLIPBERT_NLL_KERNEL"

# A module that is missing or fails to load (built against another torch, say) comes back with a rebuild.
REBUILD_HINT = "build the kernels with `make setup` (or `pip install --no-build-isolation -e .`)"

_selected = {"name": "auto"}
_nll_kernel: dict[str, str] = {}  # "name" -> the choice, once set or read from the environment
_native: dict[str, object] = {}  # "cpu" / "cuda" -> loaded module, or the ImportError text
_warned: set[str] = set()


def set_backend(name: str) -> None:
    """Set the process-wide backend: "auto" | "cuda" | "triton" | "cpu" | "reference"."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _selected["name"] = name


def get_backend() -> str:
    return _selected["name"]


def get_nll_kernel() -> str:
    """The CUDA NLL kernels' variant: set_nll_kernel's last value, else $CLIPBERT_NLL_KERNEL, else "auto"."""
    if "name" not in _nll_kernel:
        name = os.environ.get(NLL_KERNEL_ENV, "auto")
        if name not in NLL_KERNELS:
            raise ValueError(f"{NLL_KERNEL_ENV} must be one of {NLL_KERNELS}, got {name!r}")
        _nll_kernel["name"] = name
    return _nll_kernel["name"]


def set_nll_kernel(name: str) -> str:
    """Set the CUDA NLL kernels' variant for this process (one of NLL_KERNELS); returns the previous one.
    Only CUDA tensors are affected, and only speed: every variant computes the same values."""
    if name not in NLL_KERNELS:
        raise ValueError(f"nll kernel must be one of {NLL_KERNELS}, got {name!r}")
    previous = get_nll_kernel()
    _nll_kernel["name"] = name
    if not isinstance(_native.get("cuda", ""), str):
        _native["cuda"]._set_nll_kernel(NLL_KERNELS.index(name))
    return previous


def _load(kind: str) -> bool:
    """Import clipbert._C (kind "cpu") or clipbert._cuda (kind "cuda") once; True when it loaded."""
    if kind not in _native:
        # _cuda registers kernels for ops that _C defines, and is only imported where a GPU exists.
        if kind == "cuda" and (not torch.cuda.is_available() or not _load("cpu")):
            _native[kind] = "no CUDA device" if not torch.cuda.is_available() else "clipbert._C missing"
            return False
        try:
            _native[kind] = importlib.import_module("clipbert._C" if kind == "cpu" else "clipbert._cuda")
        except ImportError as err:
            _native[kind] = f"{type(err).__name__}: {err}; {REBUILD_HINT}"
        else:
            if kind == "cuda":
                _native[kind]._set_nll_kernel(NLL_KERNELS.index(get_nll_kernel()))
    return not isinstance(_native[kind], str)


def native_available(kind: str) -> bool:
    """Whether the compiled kernels for "cpu" or "cuda" are built and loadable here."""
    return _load(kind)


def native_ready(t: torch.Tensor, backend: str | None) -> bool:
    """Whether `backend` (None: the process-wide one) runs an already loaded compiled kernel on `t`: a
    check cheap enough for the one-launch ops (about 0.1 us, against 1.2 us for `resolve`). False means
    only: ask `resolve`, which also raises the errors."""
    name = _selected["name"] if backend is None else backend
    kind = "cuda" if t.is_cuda else ("cpu" if t.is_cpu else None)
    if name != "auto" and name != kind:
        return False
    return kind is not None and not isinstance(_native.get(kind, ""), str)


def triton_available(device: torch.device) -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def resolve(backend: str | None, device: torch.device) -> str:
    """The concrete backend ("cuda" | "cpu" | "triton" | "reference") to run on tensors of `device`."""
    name = get_backend() if backend is None else backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "auto":
        kind = device.type if device.type in ("cpu", "cuda") else None
        if kind is not None and _load(kind):
            return kind
        _warn_once(
            f"auto-{device.type}",
            f"clipbert.ops: no compiled kernel for {device.type} tensors "
            f"({_native.get(kind, 'unsupported device')}); using the PyTorch reference",
        )
        return "reference"
    if name in ("cpu", "cuda"):
        if device.type != name:
            raise RuntimeError(
                f"clipbert.ops backend {name!r} needs {name} tensors, got a tensor on {device}"
            )
        if not _load(name):
            raise RuntimeError(f"clipbert.ops backend {name!r} is not available: {_native[name]}")
    if name == "triton" and not triton_available(device):
        raise RuntimeError(
            f"clipbert.ops backend 'triton' is not available for {device} tensors: needs triton installed, "
            "and TRITON_INTERPRET=1 set before triton is imported for CPU tensors"
        )
    return name
