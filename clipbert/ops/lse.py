"""Clip-score aggregation (paper Sec. 3, Eq. 5-6, Table 3): public wrappers over the backends."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipbert.ops import _backend
from clipbert.ops._registry import REDUCTIONS
from clipbert.ops.reference import (
    acc_dtype,
    lse_aggregate_nll_reference,
    lse_aggregate_nll_value_and_grad_reference,
    lse_aggregate_reference,
)

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_VG_OP: list = []  # torch.ops.clipbert.lse_aggregate_nll_value_and_grad.default, once clipbert._C is loaded
MODES = ("lse", "mean", "max")


def _check_logits(logits: torch.Tensor, op: str) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{op}: logits must be a Tensor [B, N, K], got {type(logits).__name__}")
    if logits.dim() != 3 or logits.shape[1] == 0 or logits.shape[2] == 0:
        raise ValueError(f"{op}: logits must be [B, N, K] with N, K > 0, got {list(logits.shape)}")
    if logits.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{op}: logits must be float32/float16/bfloat16/float64, got {logits.dtype}")


def _check_target(target: torch.Tensor, logits: torch.Tensor, op: str, backend: str) -> None:
    B, _, K = logits.shape
    if not isinstance(target, torch.Tensor) or target.dtype != torch.int64:
        raise ValueError(
            f"{op}: target must be an int64 Tensor [B] = [{B}], got {getattr(target, 'dtype', target)}"
        )
    if target.shape != (B,):
        raise ValueError(f"{op}: target must be [B] = [{B}], got {list(target.shape)}")
    if target.device != logits.device:
        raise ValueError(f"{op}: target must be on {logits.device}, got {target.device}")
    # The C++ kernels check the range themselves (one pass, no extra ops) and CUDA ones assert in-kernel
    # (a host check would synchronize), so only the Python backends are checked here.
    if backend not in ("reference", "triton") or B == 0:
        return
    if target.device.type != "cpu":
        # Triton's kernels index with the target unchecked (tl.device_assert is off outside debug mode): an
        # out-of-range one would read another row's logits or past the tensor, silently. A device-side
        # assert costs no synchronization. (The reference's gather asserts by itself.)
        if backend == "triton":
            torch._assert_async(((target >= 0) & (target < K)).all(), f"{op}: a target is outside [0, K={K})")
        return
    if not torch.compiler.is_compiling():
        bad = (target < 0) | (target >= K)
        if bool(bad.any()):
            b = int(bad.nonzero()[0, 0])
            raise ValueError(f"{op}: target[{b}] = {int(target[b])} is outside [0, K) = [0, {K})")


def _ops(name: str):
    if name == "triton":
        from clipbert.ops import _triton_ops  # noqa: F401  (registers torch.ops.clipbert_triton)

        return torch.ops.clipbert_triton
    return torch.ops.clipbert


def lse_aggregate(logits: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """LogSumExp clip aggregation (log of paper Eq. 5).

    logits: [B, N_clips, K] float32/float16/bfloat16/float64.
    Returns [B, K] float32 (float64 for float64 input) log-probabilities:
    out[b, k] = logsumexp_n logits[b, n, k] - logsumexp_{n, k'} logits[b, n, k'].

    Conventions, the same on every backend: a class -inf in every clip is -inf; a row of -inf throughout, or
    with a NaN logit, is NaN; a +inf logit makes its row non-finite (the kernels: NaN throughout; the
    reference: NaN for its class, -inf for the others). A non-finite row never changes another row's values
    or gradients. The math is float32 for 16/32-bit logits, so out is a difference of two float32 logsumexps
    of the logits' magnitude: its absolute error is about that magnitude's float32 ulp (2e-4 at 1e4; at 1e10
    a row of equal logits reads 0 instead of -log K), on the reference as on the kernels.
    """
    _check_logits(logits, "lse_aggregate")
    name = _backend.resolve(backend, logits.device)
    if name == "reference":
        return lse_aggregate_reference(logits)
    return _ops(name).lse_aggregate(logits)[0]


def lse_aggregate_nll(
    logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean", *, backend: str | None = None
) -> torch.Tensor:
    """Fused LSE aggregation + negative log-likelihood (paper Eq. 6), the training hot path.

    logits: [B, N_clips, K]; target: [B] int64 in [0, K); reduction: "mean" | "sum" | "none".
    Returns float32 (float64 for float64 logits): [] for mean/sum, [B] for none.

    There is no ignore_index: a target outside [0, K) raises naming the entry (on CUDA, a device-side
    assert), and int32 targets are refused. A row whose target class is -inf in every clip has loss +inf
    and NaN gradients in that column; a NaN or +inf logit makes its row's loss non-finite (see
    `lse_aggregate`). Either way only that row's loss and gradient are non-finite; a mean or sum over the
    batch is then non-finite too, while the other rows' gradients stay finite.
    """
    _check_logits(logits, "lse_aggregate_nll")
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"lse_aggregate_nll: reduction must be one of {tuple(REDUCTIONS)}, got {reduction!r}"
        )
    name = _backend.resolve(backend, logits.device)
    _check_target(target, logits, "lse_aggregate_nll", name)
    if name == "reference":
        return lse_aggregate_nll_reference(logits, target, reduction)
    return _ops(name).lse_aggregate_nll(logits, target, REDUCTIONS[reduction])[0]


def lse_aggregate_nll_value_and_grad(
    logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean", *, backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of `lse_aggregate_nll` and its gradient with respect to the logits, from one kernel.

    logits: [B, N_clips, K]; target: [B] int64 in [0, K); reduction: "mean" | "sum" | "none".
    Returns (loss, grad_logits): loss as `lse_aggregate_nll` returns it, grad_logits [B, N, K] contiguous in
    the logits' dtype, d loss.sum() / d logits. Neither carries an autograd graph, so drive backward with
    the gradient yourself, e.g. `loss, g = ...(logits.detach(), t); logits.backward(g)`.

    Why: for small inputs a forward and backward through autograd costs mostly host time (the engine, two
    launches, saved tensors); this form is one launch, and it reads the logits once instead of twice.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            "lse_aggregate_nll_value_and_grad: logits must be a Tensor [B, N, K], "
            f"got {type(logits).__name__}"
        )
    red = REDUCTIONS.get(reduction) if isinstance(reduction, str) else None
    if red is None:
        raise ValueError(
            "lse_aggregate_nll_value_and_grad: reduction must be one of "
            f"{tuple(REDUCTIONS)}, got {reduction!r}"
        )
    # This path is meant to cost one call, so no Python checks: the C++ kernels check every argument and
    # name it. The op is looked up once (attribute lookups cost about 0.5 us a call).
    if _backend.native_ready(logits, backend) or _backend.resolve(backend, logits.device) in ("cpu", "cuda"):
        if not _VG_OP:
            _VG_OP.append(torch.ops.clipbert.lse_aggregate_nll_value_and_grad.default)
        return _VG_OP[0](logits, target, red)
    name = _backend.resolve(backend, logits.device)
    _check_logits(logits, "lse_aggregate_nll_value_and_grad")
    _check_target(target, logits, "lse_aggregate_nll_value_and_grad", name)
    if name == "reference":
        return lse_aggregate_nll_value_and_grad_reference(logits, target, reduction)
    # detach: the custom op has no autograd, and its outputs are values either way.
    return _ops(name).lse_aggregate_nll_value_and_grad(logits.detach(), target, red)


def clip_aggregate(logits: torch.Tensor, mode: str = "lse", *, backend: str | None = None) -> torch.Tensor:
    """Aggregate per-clip scores into video log-probabilities (paper Table 3).

    logits: [B, N_clips, K]; mode: "lse" (Eq. 5, fused kernel), "mean" or "max" (pool logits over clips,
    then log-softmax; composed from PyTorch ops). Returns [B, K] float32 (float64 for float64 input).
    "max" at exact ties: clips that share a class's max share its gradient equally (torch.amax's convention,
    so every backend agrees).
    """
    if mode not in MODES:
        raise ValueError(f"clip_aggregate: mode must be one of {MODES}, got {mode!r}")
    if mode == "lse":
        return lse_aggregate(logits, backend=backend)
    _check_logits(logits, "clip_aggregate")
    _backend.resolve(backend, logits.device)  # an unavailable explicit backend still raises
    x = logits.to(acc_dtype(logits.dtype))
    pooled = x.mean(dim=1) if mode == "mean" else x.amax(dim=1)
    return F.log_softmax(pooled, dim=-1)
