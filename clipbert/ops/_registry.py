"""Fake (meta) kernels for the compiled `clipbert::` ops, and autograd for the Triton `clipbert_triton::`
ops. The compiled ops' autograd is in C++ (csrc/ops/autograd.cpp), so a training step pays no Python for
it; both wire backward to the same forward/backward op pairs.

The auxiliary outputs (lse_all, stats) exist only so backward need not re-read the logits; they are
marked non-differentiable.
"""

from __future__ import annotations

import torch

from clipbert.ops.reference import acc_dtype

REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


def _lse_fake(logits):
    B, _, K = logits.shape
    acc = acc_dtype(logits.dtype)
    return logits.new_empty((B, K), dtype=acc), logits.new_empty((B,), dtype=acc)


def _nll_fake(logits, target, reduction):
    B = logits.shape[0]
    acc = acc_dtype(logits.dtype)
    loss = logits.new_empty((B,) if reduction == 0 else (), dtype=acc)
    return loss, logits.new_empty((B, 2), dtype=acc)


def _nll_value_and_grad_fake(logits, target, reduction):
    loss, _ = _nll_fake(logits, target, reduction)
    return loss, torch.empty_like(logits, memory_format=torch.contiguous_format)


def _logits_like(*args):
    logits = args[1]
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _temporal_fake(x):
    return x.new_empty(x.shape[:1] + x.shape[2:])


def _temporal_bwd_fake(grad, T):
    return grad.new_empty(grad.shape[:1] + (T,) + grad.shape[1:])


def register(ns: str) -> None:
    """Register fakes and autograd for the ops of namespace `ns` ("clipbert" or "clipbert_triton")."""
    ops = getattr(torch.ops, ns)
    fakes = {
        "lse_aggregate": _lse_fake,
        "_lse_aggregate_backward": _logits_like,
        "lse_aggregate_nll": _nll_fake,
        "_lse_aggregate_nll_backward": _logits_like,
        "lse_aggregate_nll_value_and_grad": _nll_value_and_grad_fake,
        "temporal_mean": _temporal_fake,
        "_temporal_mean_backward": _temporal_bwd_fake,
    }
    if ns == "clipbert":  # the custom_op-defined triton ops register their fakes where they are defined
        for name, fn in fakes.items():
            torch.library.register_fake(f"{ns}::{name}", fn)
        return  # autograd: registered by clipbert._C for the Autograd key

    def lse_setup(ctx, inputs, output):
        out, lse_all = output
        ctx.save_for_backward(inputs[0], out, lse_all)
        ctx.mark_non_differentiable(lse_all)

    def lse_backward(ctx, grad_out, _grad_lse_all):
        logits, out, lse_all = ctx.saved_tensors
        return ops._lse_aggregate_backward(grad_out, logits, out, lse_all)

    def nll_setup(ctx, inputs, output):
        logits, target, reduction = inputs
        ctx.reduction = reduction
        ctx.save_for_backward(logits, target, output[1])
        ctx.mark_non_differentiable(output[1])

    def nll_backward(ctx, grad_loss, _grad_stats):
        logits, target, stats = ctx.saved_tensors
        return ops._lse_aggregate_nll_backward(grad_loss, logits, target, stats, ctx.reduction), None, None

    def temporal_setup(ctx, inputs, output):
        ctx.frames = inputs[0].shape[1]

    def temporal_backward(ctx, grad):
        return ops._temporal_mean_backward(grad, ctx.frames)

    torch.library.register_autograd(f"{ns}::lse_aggregate", lse_backward, setup_context=lse_setup)
    torch.library.register_autograd(f"{ns}::lse_aggregate_nll", nll_backward, setup_context=nll_setup)
    torch.library.register_autograd(f"{ns}::temporal_mean", temporal_backward, setup_context=temporal_setup)
