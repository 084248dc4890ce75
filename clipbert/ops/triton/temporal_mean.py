"""Triton kernels for temporal_mean (forward and backward).

x is read as [B, T, R] with explicit B/T strides (inner R contiguous; the launcher copies only when the
inner dims are strided). Grid: (B, cdiv(R, BLOCK)); each program accumulates T rows of BLOCK in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _temporal_mean_fwd_kernel(
    x_ptr, out_ptr, T, R, stride_b, stride_t, ACC: tl.constexpr, BLOCK: tl.constexpr
):
    b = tl.program_id(0).to(tl.int64)  # b * stride_b passes 2^31 on large batches
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < R
    acc = tl.zeros([BLOCK], ACC)
    for t in range(0, T):
        acc += tl.load(x_ptr + b * stride_b + t * stride_t + offs, mask=mask, other=0.0).to(ACC)
    mean = acc / T
    tl.store(out_ptr + b * R + offs, mean.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _temporal_mean_bwd_kernel(g_ptr, gx_ptr, T, R, ACC: tl.constexpr, BLOCK: tl.constexpr):
    bt = tl.program_id(0).to(tl.int64)  # flattened (b, t) row of grad_x [B, T, R]; bt * R may pass 2^31
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < R
    g = tl.load(g_ptr + (bt // T) * R + offs, mask=mask, other=0.0).to(ACC)
    tl.store(gx_ptr + bt * R + offs, (g / T).to(gx_ptr.dtype.element_ty), mask=mask)


def _inner_dense(x: torch.Tensor) -> bool:
    expected = 1
    for d in range(x.dim() - 1, 1, -1):
        if x.shape[d] != 1 and x.stride(d) != expected:
            return False
        expected *= x.shape[d]
    return True


MAX_GRID_Y = 65535  # CUDA's limit on the second grid dimension


def _grid(rows: int, R: int) -> tuple[int, int]:
    """(rows, chunks of R): a launch past CUDA's grid limit fails with an unclear error, so say which."""
    chunks = triton.cdiv(R, BLOCK)
    if chunks > MAX_GRID_Y:
        raise ValueError(
            f"temporal_mean (triton): {R} elements per sample need {chunks} blocks of {BLOCK}, over the "
            f"grid's {MAX_GRID_Y}; use backend='cuda' or 'reference' for samples over {MAX_GRID_Y * BLOCK}"
        )
    return rows, chunks


def _tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def temporal_mean_fwd(x: torch.Tensor) -> torch.Tensor:
    """x [B, T, ...] -> [B, ...] in x's dtype."""
    assert x.dim() >= 2 and x.shape[1] > 0, f"x must be [B, T, ...] with T > 0, got {tuple(x.shape)}"
    assert x.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64), x.dtype
    x = x if _inner_dense(x) else x.contiguous()
    out = x.new_empty(x.shape[:1] + x.shape[2:])
    B, T = x.shape[:2]
    R = out[0].numel() if B > 0 else 0
    if out.numel() > 0:
        _temporal_mean_fwd_kernel[_grid(B, R)](
            x, out, T, R, x.stride(0), x.stride(1), ACC=_tl_acc(x.dtype), BLOCK=BLOCK
        )
    return out


def temporal_mean_bwd(grad: torch.Tensor, T: int) -> torch.Tensor:
    """grad [B, ...] -> grad_x [B, T, ...] = grad / T."""
    assert grad.dim() >= 1 and T > 0, (tuple(grad.shape), T)
    grad = grad.contiguous()
    grad_x = grad.new_empty(grad.shape[:1] + (T,) + grad.shape[1:])
    if grad_x.numel() > 0:
        B = grad.shape[0]
        R = grad.numel() // B
        _temporal_mean_bwd_kernel[_grid(B * T, R)](grad, grad_x, T, R, ACC=_tl_acc(grad.dtype), BLOCK=BLOCK)
    return grad_x
