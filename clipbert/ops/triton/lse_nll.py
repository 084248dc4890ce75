"""Triton kernels for lse_aggregate_nll: forward, backward and the value-and-grad op.

The NLL needs two numbers per row b of logits [B, N, K] with target t: la = lse over all N*K logits and
lt = lse over the N logits of column t (loss = la - lt). So a row is read as one flat vector in BLOCK-sized
chunks with an online max/sum: one exp per logit. Why not per column as lse_aggregate does: that kernel walks
the N clips one K-wide vector at a time, with two exps and a rescale per logit in a chain through n, and
pads K up to a power of two (1540 -> 2048); it read at 11% of copy bandwidth on an H200 (2026-11-27).
The backward is elementwise: a 2D grid of (chunk, row) programs.

CONTIG (the logits contiguous, as callers almost always pass them) indexes a row's flat offsets directly;
otherwise each offset is split into (n, k) and taken through the strides.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Logits a program loads at a time. Why 4,096 with 4 warps: 32 a thread, four (bf16) or eight (fp32) 128-bit
# loads in flight before the chunk's max and sum, as the CUDA kernels' `stream4` keeps; the row-per-program
# kernels reduce each chunk across the block, so fewer, larger chunks mean fewer barriers per row.
MAX_BLOCK = 4096
BWD_BLOCK = 2048


@triton.jit
def _offsets(idx, K, stride_n, stride_k, CONTIG: tl.constexpr):
    """Memory offsets (in elements, from the row's start) of a row's flat indices idx = n * K + k."""
    if CONTIG:
        off = idx
    else:
        off = (idx // K) * stride_n + (idx % K) * stride_k
    return off


@triton.jit
def _row_stats(
    x_ptr,
    row,
    target,
    N,
    K,
    n_el,
    stride_b,
    stride_n,
    stride_k,
    ACC: tl.constexpr,
    CONTIG: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """(la, lt) of row `row`: lse over its N*K logits, lse over n of column `target`."""
    base = x_ptr + row.to(tl.int64) * stride_b
    m = tl.full([], float("-inf"), ACC)
    s = tl.zeros([], ACC)
    for start in range(0, n_el, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        v = tl.load(base + _offsets(idx, K, stride_n, stride_k, CONTIG), mask=idx < n_el, other=float("-inf"))
        v = v.to(ACC)
        m_new = tl.maximum(m, tl.max(v, axis=0))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # all -inf so far: avoid -inf - -inf
        s = s * tl.exp(m - shift) + tl.sum(tl.exp(v - shift), axis=0)
        m = m_new
    mt = tl.full([], float("-inf"), ACC)
    st = tl.zeros([], ACC)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        v = tl.load(base + n * stride_n + target * stride_k, mask=n < N, other=float("-inf")).to(ACC)
        m_new = tl.maximum(mt, tl.max(v, axis=0))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        st = st * tl.exp(mt - shift) + tl.sum(tl.exp(v - shift), axis=0)
        mt = m_new
    # log(0) = -inf for an all -inf row, as the reference gives
    return m + tl.log(s), mt + tl.log(st)


@triton.jit
def _grad(v, idx, K, target, la, lt, w):
    """w * (exp(x - la) - [k == target] exp(x - lt)) for logits v at flat indices idx (k = idx % K)."""
    # x <= lt in column `target`, so the clamp changes nothing there and keeps the other lanes' exp (computed,
    # then discarded by the where) from overflowing. A where, not tl.minimum: minimum(NaN, 0) is 0 on the GPU
    # (and in the interpreter), so a target column that is -inf in every clip (x - lt = -inf - -inf) got a
    # finite -w per clip where the C++/CUDA kernels and the reference give NaN, on a loss that is +inf.
    d = v - lt
    p = tl.exp(v - la) - tl.where(idx % K == target, tl.exp(tl.where(d > 0.0, 0.0, d)), 0.0)
    return w * p


@triton.jit
def _nll_fwd_kernel(
    x_ptr,
    t_ptr,
    loss_ptr,
    stats_ptr,
    N,
    K,
    n_el,
    stride_b,
    stride_n,
    stride_k,
    ACC: tl.constexpr,
    CONTIG: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0)
    target = tl.load(t_ptr + row)
    la, lt = _row_stats(
        x_ptr, row, target, N, K, n_el, stride_b, stride_n, stride_k, ACC, CONTIG, BLOCK, BLOCK_N
    )
    tl.store(stats_ptr + 2 * row, la)
    tl.store(stats_ptr + 2 * row + 1, lt)
    tl.store(loss_ptr + row, la - lt)


@triton.jit
def _nll_bwd_kernel(
    w_ptr,
    x_ptr,
    t_ptr,
    stats_ptr,
    gx_ptr,
    N,
    K,
    n_el,
    stride_b,
    stride_n,
    stride_k,
    ACC: tl.constexpr,
    CONTIG: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # program (row, chunk): BLOCK logits of one row; grad[b] is contiguous whatever the logits' strides
    row, chunk = tl.program_id(0), tl.program_id(1)
    idx = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n_el
    w = tl.load(w_ptr + row).to(ACC)
    target = tl.load(t_ptr + row)
    la = tl.load(stats_ptr + 2 * row).to(ACC)
    lt = tl.load(stats_ptr + 2 * row + 1).to(ACC)
    row64 = row.to(tl.int64)
    v = tl.load(
        x_ptr + row64 * stride_b + _offsets(idx, K, stride_n, stride_k, CONTIG),
        mask=mask,
        other=float("-inf"),
    )
    g = _grad(v.to(ACC), idx, K, target, la, lt, w)
    tl.store(gx_ptr + row64 * n_el + idx, g.to(gx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _nll_value_and_grad_kernel(
    x_ptr,
    t_ptr,
    loss_ptr,
    gx_ptr,
    denom,
    N,
    K,
    n_el,
    stride_b,
    stride_n,
    stride_k,
    ACC: tl.constexpr,
    CONTIG: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # loss_b = la - lt; grad = (exp(x - la) - [k == t] exp(x - lt)) / denom, with denom = B for mean, else 1:
    # an integer, so the division happens in ACC (a float scalar argument would reach a compiled kernel as
    # float32, and 1/B in float32 is not exact enough for float64 logits). The second pass re-reads the row
    # this program has just reduced (L2).
    row = tl.program_id(0)
    target = tl.load(t_ptr + row)
    la, lt = _row_stats(
        x_ptr, row, target, N, K, n_el, stride_b, stride_n, stride_k, ACC, CONTIG, BLOCK, BLOCK_N
    )
    tl.store(loss_ptr + row, la - lt)
    row64 = row.to(tl.int64)
    for start in range(0, n_el, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        mask = idx < n_el
        v = tl.load(
            x_ptr + row64 * stride_b + _offsets(idx, K, stride_n, stride_k, CONTIG),
            mask=mask,
            other=float("-inf"),
        )
        g = _grad(v.to(ACC), idx, K, target, la, lt, 1.0) / denom
        tl.store(gx_ptr + row64 * n_el + idx, g.to(gx_ptr.dtype.element_ty), mask=mask)


def _tl_acc(logits: torch.Tensor):
    return tl.float64 if logits.dtype == torch.float64 else tl.float32


def _check(logits: torch.Tensor, target: torch.Tensor) -> tuple[int, int, int]:
    assert logits.dim() == 3, f"logits must be [B, N, K], got {tuple(logits.shape)}"
    assert logits.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64), logits.dtype
    B, N, K = logits.shape
    assert N > 0 and K > 0 and N * K < 2**31, f"need N > 0, K > 0, N * K < 2^31, got {tuple(logits.shape)}"
    assert target.shape == (B,) and target.dtype == torch.int64, (target.shape, target.dtype)
    return B, N, K


def _row_launch(logits: torch.Tensor) -> dict:
    """The launch constants of the program-per-row kernels for these logits."""
    _, N, K = logits.shape
    return dict(
        ACC=_tl_acc(logits),
        CONTIG=logits.is_contiguous(),
        BLOCK=min(MAX_BLOCK, max(16, triton.next_power_of_2(N * K))),
        BLOCK_N=min(256, max(16, triton.next_power_of_2(N))),
        num_warps=4 if N * K >= 1024 else (2 if N * K >= 256 else 1),
    )


def _reduce(row_loss: torch.Tensor, reduction: int) -> torch.Tensor:
    return row_loss if reduction == 0 else (row_loss.mean() if reduction == 1 else row_loss.sum())


def lse_aggregate_nll_fwd(logits, target, reduction: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (loss [B] (reduction 0) or [] (1 mean, 2 sum), stats [B, 2] = (lse_all, lse_target))."""
    B, N, K = _check(logits, target)
    assert reduction in (0, 1, 2), reduction
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    row_loss = logits.new_empty((B,), dtype=acc)
    stats = logits.new_empty((B, 2), dtype=acc)
    if B > 0:
        _nll_fwd_kernel[(B,)](
            logits, target.contiguous(), row_loss, stats, N, K, N * K, *logits.stride(), **_row_launch(logits)
        )
    return _reduce(row_loss, reduction), stats


def lse_aggregate_nll_bwd(grad_loss, logits, target, stats, reduction: int) -> torch.Tensor:
    B, N, K = _check(logits, target)
    assert stats.shape == (B, 2), stats.shape
    # Per-row weight of the loss gradient: grad itself (none), or the scalar grad, divided by B for mean.
    weight = grad_loss if reduction == 0 else grad_loss.expand(B) / (B if reduction == 1 else 1)
    grad_x = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    if B > 0:
        grid = (B, triton.cdiv(N * K, BWD_BLOCK))  # rows on the axis without a 65,535 limit
        assert grid[1] <= 65535, f"rows of {N * K} logits are too long for the Triton NLL backward"
        _nll_bwd_kernel[grid](
            weight.contiguous(),
            logits,
            target.contiguous(),
            stats.contiguous(),
            grad_x,
            N,
            K,
            N * K,
            *logits.stride(),
            ACC=_tl_acc(logits),
            CONTIG=logits.is_contiguous(),
            BLOCK=BWD_BLOCK,
            num_warps=4,
        )
    return grad_x


def lse_aggregate_nll_value_and_grad(logits, target, reduction: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (loss [B] (reduction 0) or [] (1 mean, 2 sum), grad [B, N, K] in logits' dtype, contiguous)."""
    B, N, K = _check(logits, target)
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
            N * K,
            *logits.stride(),
            **_row_launch(logits),
        )
    return _reduce(row_loss, reduction), grad_x
