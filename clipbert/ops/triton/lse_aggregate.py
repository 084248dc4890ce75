"""Triton kernels for lse_aggregate (forward and backward); the NLL's are in lse_nll.py.

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
    # Masked columns (s = 0) become -inf without evaluating log(0). A NaN sum (a NaN logit, or +inf - +inf)
    # compares false with 0 too: it stays NaN, as torch.logsumexp's, instead of reading as masked.
    lse = tl.where(s > 0, shift + tl.log(tl.where(s > 0, s, 1.0)), float("-inf"))
    return tl.where(s == s, lse, s)


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
    row = tl.program_id(0).to(tl.int64)  # row * stride_b passes 2^31 on large batches
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
    row = tl.program_id(0).to(tl.int64)  # row * stride_b passes 2^31 on large batches
    offs = tl.arange(0, BLOCK_K)
    mask = offs < K
    g = tl.load(g_ptr + row * K + offs, mask=mask, other=0.0).to(ACC)
    o = tl.load(out_ptr + row * K + offs, mask=mask, other=0.0).to(ACC)
    g_sum = tl.sum(g, axis=0)
    lse_all = tl.load(lse_ptr + row).to(ACC)
    # x - lse_k is taken as t - o, which is -inf - -inf = NaN where lse_k - lse_all overflowed to o = -inf
    # while x - lse_all did too (logits near +-max of ACC, e.g. bf16 ones of +-3.4e38). Those columns take
    # x - lse_k with lse_k read again from the logits, as the reference's; a column -inf in every clip keeps
    # the formula's value. The extra pass over the row runs only for a row that has such a column.
    overflow = (o == float("-inf")) & mask
    lse_k = tl.full([BLOCK_K], float("-inf"), ACC)
    if tl.max(overflow.to(tl.int32), axis=0) > 0:
        lse_k = _column_lse(x_ptr, row, N, K, stride_b, stride_n, stride_k, ACC, BLOCK_K)
    refetch = overflow & (lse_k > float("-inf"))
    for n in range(0, N):
        v = tl.load(x_ptr + row * stride_b + n * stride_n + offs * stride_k, mask=mask, other=float("-inf"))
        t = v.to(ACC) - lse_all
        gx = g * tl.exp(tl.where(refetch, v.to(ACC) - lse_k, t - o)) - g_sum * tl.exp(t)
        tl.store(gx_ptr + (row * N + n) * K + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)


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
