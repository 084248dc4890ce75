"""Triton kernel for lse_aggregate_nll_value_and_grad: the loss of Eq. 6 and its gradient in one launch.

One program per row b of logits [B, N, K], as in lse_aggregate.py: the program reduces the row to
lse_all and lse_t (the row's loss), then walks the clips again and writes the gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from clipbert.ops.triton.lse_aggregate import _check_logits, _column_lse, _row_lse, _tl_acc


@triton.jit
def _nll_value_and_grad_kernel(
    x_ptr,
    t_ptr,
    loss_ptr,
    gx_ptr,
    denom,
    N,
    K,
    stride_b,
    stride_n,
    stride_k,
    ACC: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # loss_b = lse_all - lse_t; grad[b,n,j] = (exp(x - lse_all) - [j == t_b] exp(x - lse_t)) / denom, with
    # denom = B for mean, else 1: an integer, so the division happens in ACC (a float scalar argument would
    # reach a compiled kernel as float32, and 1/B in float32 is not exact enough for float64 logits).
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_K)
    mask = offs < K
    target = tl.load(t_ptr + row)
    lse_k = _column_lse(x_ptr, row, N, K, stride_b, stride_n, stride_k, ACC, BLOCK_K)
    lse_all = _row_lse(lse_k)
    lse_t = tl.sum(tl.where(offs == target, lse_k, 0.0), axis=0)
    tl.store(loss_ptr + row, lse_all - lse_t)
    for n in range(0, N):
        v = tl.load(x_ptr + row * stride_b + n * stride_n + offs * stride_k, mask=mask, other=float("-inf"))
        v = v.to(ACC)
        p = tl.exp(v - lse_all) - tl.where(offs == target, tl.exp(v - lse_t), 0.0)
        tl.store(gx_ptr + (row * N + n) * K + offs, (p / denom).to(gx_ptr.dtype.element_ty), mask=mask)


def lse_aggregate_nll_value_and_grad(logits, target, reduction: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (loss [B] (reduction 0) or [] (1 mean, 2 sum), grad [B, N, K] in logits' dtype, contiguous)."""
    B, N, K = _check_logits(logits)
    assert target.shape == (B,) and target.dtype == torch.int64, (target.shape, target.dtype)
    assert reduction in (0, 1, 2), reduction
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    row_loss = logits.new_empty((B,), dtype=acc)
    grad_x = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    if B > 0:
        _nll_value_and_grad_kernel[(B,)](
            logits,
            target.contiguous(),
            row_loss,
            grad_x,
            B if reduction == 1 else 1,
            N,
            K,
            *logits.stride(),
            ACC=_tl_acc(logits),
            BLOCK_K=triton.next_power_of_2(K),
        )
    loss = row_loss if reduction == 0 else (row_loss.mean() if reduction == 1 else row_loss.sum())
    return loss, grad_x
