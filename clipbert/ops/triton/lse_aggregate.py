"""Triton kernels for lse_aggregate and lse_aggregate_nll (forward and backward).

One program per row b of logits [B, N, K]; a row of K classes is one BLOCK_K vector and the program
walks the N clips with an online max/sum, so every logit is read once. Math runs in the dtype of the
auxiliary output (float32, or float64 for float64 logits). No tl.dot (wrong for bf16 in the interpreter).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK_K = 1 << 16  # one row of classes must fit in one program


@triton.jit
def _column_lse(x_ptr, row, N, K, stride_b, stride_n, stride_k, ACC: tl.constexpr, BLOCK_K: tl.constexpr):
    """lse over n of every column k of row `row`: [BLOCK_K], -inf for masked columns."""
    offs = tl.arange(0, BLOCK_K)
    mask = offs < K
    m = tl.full([BLOCK_K], float("-inf"), ACC)
    s = tl.zeros([BLOCK_K], ACC)
    for n in range(0, N):
        v = tl.load(x_ptr + row * stride_b + n * stride_n + offs * stride_k, mask=mask, other=float("-inf"))
        v = v.to(ACC)
        m_new = tl.maximum(m, v)
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # all -inf so far: avoid -inf - -inf
        s = s * tl.exp(m - shift) + tl.exp(v - shift)
        m = m_new
    shift = tl.where(m == float("-inf"), 0.0, m)
    # Masked columns (s = 0) become -inf without evaluating log(0).
    return tl.where(s > 0, shift + tl.log(tl.where(s > 0, s, 1.0)), float("-inf"))


@triton.jit
def _row_lse(v):
    """lse of a vector (masked entries = -inf)."""
    m = tl.max(v, axis=0)
    shift = tl.where(m == float("-inf"), 0.0, m)
    return shift + tl.log(tl.sum(tl.exp(v - shift), axis=0))


@triton.jit
def _lse_fwd_kernel(
    x_ptr, out_ptr, lse_ptr, N, K, stride_b, stride_n, stride_k, ACC: tl.constexpr, BLOCK_K: tl.constexpr
):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_K)
    lse_k = _column_lse(x_ptr, row, N, K, stride_b, stride_n, stride_k, ACC, BLOCK_K)
    lse_all = _row_lse(lse_k)
    tl.store(out_ptr + row * K + offs, lse_k - lse_all, mask=offs < K)
    tl.store(lse_ptr + row, lse_all)


@triton.jit
def _lse_bwd_kernel(
    g_ptr,
    x_ptr,
    out_ptr,
    lse_ptr,
    gx_ptr,
    N,
    K,
    stride_b,
    stride_n,
    stride_k,
    ACC: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # grad[b,n,j] = g[b,j] exp(x - lse_all - out[j]) - (sum_k g[b,k]) exp(x - lse_all)
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_K)
    mask = offs < K
    g = tl.load(g_ptr + row * K + offs, mask=mask, other=0.0).to(ACC)
    o = tl.load(out_ptr + row * K + offs, mask=mask, other=0.0).to(ACC)
    g_sum = tl.sum(g, axis=0)
    lse_all = tl.load(lse_ptr + row).to(ACC)
    for n in range(0, N):
        v = tl.load(x_ptr + row * stride_b + n * stride_n + offs * stride_k, mask=mask, other=float("-inf"))
        t = v.to(ACC) - lse_all
        gx = g * tl.exp(t - o) - g_sum * tl.exp(t)
        tl.store(gx_ptr + (row * N + n) * K + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _nll_fwd_kernel(
    x_ptr,
    t_ptr,
    loss_ptr,
    stats_ptr,
    N,
    K,
    stride_b,
    stride_n,
    stride_k,
    ACC: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_K)
    target = tl.load(t_ptr + row)
    lse_k = _column_lse(x_ptr, row, N, K, stride_b, stride_n, stride_k, ACC, BLOCK_K)
    lse_all = _row_lse(lse_k)
    lse_t = tl.sum(tl.where(offs == target, lse_k, 0.0), axis=0)
    tl.store(stats_ptr + 2 * row, lse_all)
    tl.store(stats_ptr + 2 * row + 1, lse_t)
    tl.store(loss_ptr + row, lse_all - lse_t)


@triton.jit
def _nll_bwd_kernel(
    w_ptr,
    x_ptr,
    t_ptr,
    stats_ptr,
    gx_ptr,
    N,
    K,
    stride_b,
    stride_n,
    stride_k,
    ACC: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # grad[b,n,j] = w_b (exp(x - lse_all) - [j == t_b] exp(x - lse_t))
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_K)
    mask = offs < K
    w = tl.load(w_ptr + row).to(ACC)
    target = tl.load(t_ptr + row)
    lse_all = tl.load(stats_ptr + 2 * row).to(ACC)
    lse_t = tl.load(stats_ptr + 2 * row + 1).to(ACC)
    for n in range(0, N):
        v = tl.load(x_ptr + row * stride_b + n * stride_n + offs * stride_k, mask=mask, other=float("-inf"))
        v = v.to(ACC)
        p = tl.exp(v - lse_all) - tl.where(offs == target, tl.exp(v - lse_t), 0.0)
        tl.store(gx_ptr + (row * N + n) * K + offs, (w * p).to(gx_ptr.dtype.element_ty), mask=mask)


def _tl_acc(logits: torch.Tensor):
    return tl.float64 if logits.dtype == torch.float64 else tl.float32


def _check_logits(logits: torch.Tensor) -> tuple[int, int, int]:
    assert logits.dim() == 3, f"logits must be [B, N, K], got {tuple(logits.shape)}"
    assert logits.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64), logits.dtype
    B, N, K = logits.shape
    assert N > 0 and 0 < K <= MAX_BLOCK_K, f"need N > 0 and 0 < K <= {MAX_BLOCK_K}, got {tuple(logits.shape)}"
    return B, N, K


def lse_aggregate_fwd(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, N, K] (any strides) -> (out [B, K], lse_all [B]) in float32 (float64 for float64)."""
    B, N, K = _check_logits(logits)
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    out = logits.new_empty((B, K), dtype=acc)
    lse_all = logits.new_empty((B,), dtype=acc)
    if B > 0:
        _lse_fwd_kernel[(B,)](
            logits,
            out,
            lse_all,
            N,
            K,
            *logits.stride(),
            ACC=_tl_acc(logits),
            BLOCK_K=triton.next_power_of_2(K),
        )
    return out, lse_all


def lse_aggregate_bwd(grad_out, logits, out, lse_all) -> torch.Tensor:
    B, N, K = _check_logits(logits)
    assert grad_out.shape == (B, K) and out.shape == (B, K) and lse_all.shape == (B,)
    grad_out, out = grad_out.contiguous(), out.contiguous()
    grad_x = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    if B > 0:
        _lse_bwd_kernel[(B,)](
            grad_out,
            logits,
            out,
            lse_all.contiguous(),
            grad_x,
            N,
            K,
            *logits.stride(),
            ACC=_tl_acc(logits),
            BLOCK_K=triton.next_power_of_2(K),
        )
    return grad_x


def lse_aggregate_nll_fwd(logits, target, reduction: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (loss [B] (reduction 0) or [] (1 mean, 2 sum), stats [B, 2] = (lse_all, lse_target))."""
    B, N, K = _check_logits(logits)
    assert target.shape == (B,) and target.dtype == torch.int64, (target.shape, target.dtype)
    assert reduction in (0, 1, 2), reduction
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    row_loss = logits.new_empty((B,), dtype=acc)
    stats = logits.new_empty((B, 2), dtype=acc)
    if B > 0:
        _nll_fwd_kernel[(B,)](
            logits,
            target.contiguous(),
            row_loss,
            stats,
            N,
            K,
            *logits.stride(),
            ACC=_tl_acc(logits),
            BLOCK_K=triton.next_power_of_2(K),
        )
    loss = row_loss if reduction == 0 else (row_loss.mean() if reduction == 1 else row_loss.sum())
    return loss, stats


def lse_aggregate_nll_bwd(grad_loss, logits, target, stats, reduction: int) -> torch.Tensor:
    B, N, K = _check_logits(logits)
    assert stats.shape == (B, 2) and target.shape == (B,), (stats.shape, target.shape)
    # Per-row weight of the loss gradient: grad itself (none), or the scalar grad, divided by B for mean.
    weight = grad_loss if reduction == 0 else grad_loss.expand(B) / (B if reduction == 1 else 1)
    grad_x = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    if B > 0:
        _nll_bwd_kernel[(B,)](
            weight.contiguous(),
            logits,
            target.contiguous(),
            stats.contiguous(),
            grad_x,
            N,
            K,
            *logits.stride(),
            ACC=_tl_acc(logits),
            BLOCK_K=triton.next_power_of_2(K),
        )
    return grad_x
