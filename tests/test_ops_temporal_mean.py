"""temporal_mean on every backend available here, against a float64 reference."""

import pytest
import torch
from ops_cases import CPU_BACKENDS, CUDA, device_for

from clipbert import ops

# The output is rounded to the input dtype: one rounding of an fp32-accumulated mean.
TOL = {torch.float32: 1e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3, torch.float64: 1e-12}


def _shapes(backend):
    small = [(2, 3, 5, 7), (1, 1, 3), (3, 2, 16)]
    return small if backend == "triton" else small + [(3, 4, 9, 7, 7), (2, 8, 1030)]


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, CUDA])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_values_and_grads(backend, dtype):
    for shape in _shapes(backend):
        x = torch.randn(shape, device=device_for(backend)).to(dtype).requires_grad_()
        y = ops.temporal_mean(x, backend=backend)
        assert y.dtype == dtype and y.shape == shape[:1] + shape[2:]
        torch.testing.assert_close(y.double(), x.detach().double().mean(1), rtol=TOL[dtype], atol=TOL[dtype])
        g = torch.randn_like(y)
        (gx,) = torch.autograd.grad(y, x, g)
        expected = (g.double() / shape[1]).unsqueeze(1).expand(shape)
        torch.testing.assert_close(gx.double(), expected, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, CUDA])
def test_non_contiguous_input(backend):
    base = torch.randn(4, 6, 5, 8, device=device_for(backend), dtype=torch.float64)
    views = (
        base[:, ::2],  # strided T, read in place
        base[::2],  # strided B
        base.transpose(0, 1),  # permuted B/T
        base.transpose(2, 3),  # strided inner dims: copied once
        base[..., 1:7],  # strided inner rows
    )
    for x in views:
        assert not x.is_contiguous()
        x = x.detach().requires_grad_()
        y = ops.temporal_mean(x, backend=backend)
        torch.testing.assert_close(y, x.mean(1), rtol=1e-12, atol=1e-12)
        (gx,) = torch.autograd.grad(y.sum(), x)
        torch.testing.assert_close(gx, torch.full_like(x, 1 / x.shape[1]))


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, CUDA])
def test_empty_and_degenerate(backend):
    dev = device_for(backend)
    for shape in [(0, 3, 4), (2, 3, 0), (2, 1)]:
        x = torch.randn(shape, device=dev, requires_grad=True)
        y = ops.temporal_mean(x, backend=backend)
        assert y.shape == shape[:1] + shape[2:]
        torch.testing.assert_close(y, x.detach().mean(1))
        y.sum().backward()
        assert x.grad.shape == x.shape


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, CUDA])
def test_large_values_accumulate_in_fp32(backend):
    # bf16 sums of many equal-magnitude frames lose bits if accumulated in bf16; fp32 accumulation does not.
    x = torch.full((1, 64, 8), 1.0, device=device_for(backend)).to(torch.bfloat16)
    x[:, 1::2] = 3.0
    y = ops.temporal_mean(x, backend=backend)
    assert torch.equal(y.float(), torch.full((1, 8), 2.0, device=x.device))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradcheck_float64(backend, seed):
    torch.manual_seed(seed)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: ops.temporal_mean(v, backend=backend), (x,))
    assert torch.autograd.gradcheck(
        lambda v: ops.temporal_mean(v, backend=backend), (x[:, ::2].detach().requires_grad_(),)
    )
