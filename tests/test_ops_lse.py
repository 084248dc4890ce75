"""lse_aggregate, lse_aggregate_nll and clip_aggregate on every backend available here, against float64
references computed from the same (rounded) inputs."""

import pytest
import torch
import torch.nn.functional as F
from ops_cases import CPU_BACKENDS, CUDA, device_for, extreme_logits

from clipbert import ops
from clipbert.ops import _backend

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Outputs are float32 whatever the input dtype, so value tolerances only reflect fp32 math; gradients are
# rounded to the input dtype.
GRAD_TOL = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3, torch.float64: 1e-10}


def _shapes(backend):
    # Odd sizes; the Triton interpreter is slow, so it gets the small ones only.
    small = [(3, 5, 7), (1, 1, 1), (2, 16, 2)]
    return small if backend == "triton" else small + [(5, 3, 131), (4, 9, 1540)]


def _ref_lse(x):
    x = x.double()
    return torch.logsumexp(x, 1) - torch.logsumexp(x.flatten(1), 1, keepdim=True)


def _ref_nll(x, t, reduction):
    return F.nll_loss(_ref_lse(x), t, reduction=reduction)


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, CUDA])
@pytest.mark.parametrize("dtype", DTYPES)
def test_lse_aggregate_values_and_grads(backend, dtype):
    for shape in _shapes(backend):
        x = (torch.randn(shape, device=device_for(backend)) * 3).to(dtype).requires_grad_()
        out = ops.lse_aggregate(x, backend=backend)
        assert out.dtype == torch.float32 and out.shape == (shape[0], shape[2])
        x64 = x.detach().double().requires_grad_()
        ref = _ref_lse(x64)
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=2e-5)
        w = torch.randn_like(ref)
        (g,) = torch.autograd.grad((out * w.float()).sum(), x)
        (g_ref,) = torch.autograd.grad((ref * w).sum(), x64)
        assert g.dtype == dtype
        torch.testing.assert_close(g.double(), g_ref, rtol=GRAD_TOL[dtype], atol=GRAD_TOL[dtype])


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, CUDA])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_lse_aggregate_nll_values_and_grads(backend, dtype, reduction):
    for shape in _shapes(backend):
        B, _, K = shape
        x = (torch.randn(shape, device=device_for(backend)) * 3).to(dtype).requires_grad_()
        t = torch.randint(0, K, (B,), device=x.device)
        loss = ops.lse_aggregate_nll(x, t, reduction, backend=backend)
        x64 = x.detach().double().requires_grad_()
        ref = _ref_nll(x64, t, reduction)
        assert loss.dtype == torch.float32 and loss.shape == ref.shape
        torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=2e-5)
        w = torch.rand_like(ref) + 0.5
        (g,) = torch.autograd.grad((loss * w.float()).sum(), x)
        (g_ref,) = torch.autograd.grad((ref * w).sum(), x64)
        torch.testing.assert_close(g.double(), g_ref, rtol=GRAD_TOL[dtype], atol=GRAD_TOL[dtype])


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, CUDA])
def test_non_contiguous_logits(backend):
    base = torch.randn(3, 7, 10, device=device_for(backend), dtype=torch.float64)
    for x in (base.transpose(1, 2), base[:, ::2, 1:8], base[::2]):
        assert not x.is_contiguous()
        x = x.detach().requires_grad_()
        torch.testing.assert_close(ops.lse_aggregate(x, backend=backend), _ref_lse(x), rtol=1e-10, atol=1e-10)
        t = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        loss = ops.lse_aggregate_nll(x, t, backend=backend)
        torch.testing.assert_close(loss, _ref_nll(x, t, "mean"), rtol=1e-10, atol=1e-10)
        (g,) = torch.autograd.grad(loss, x)
        x2 = x.detach().clone().requires_grad_()
        (g_ref,) = torch.autograd.grad(_ref_nll(x2, t, "mean"), x2)
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, CUDA])
def test_empty_batch(backend):
    x = torch.randn(0, 4, 3, device=device_for(backend), requires_grad=True)
    t = torch.zeros(0, dtype=torch.int64, device=x.device)
    out = ops.lse_aggregate(x, backend=backend)
    assert out.shape == (0, 3)
    out.sum().backward()
    assert x.grad.shape == (0, 4, 3)
    assert ops.lse_aggregate_nll(x, t, "none", backend=backend).shape == (0,)
    assert ops.lse_aggregate_nll(x, t, "sum", backend=backend).item() == 0.0
    assert torch.isnan(ops.lse_aggregate_nll(x, t, "mean", backend=backend))  # as F.nll_loss


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, CUDA])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_logits_are_finite(backend, dtype):
    x = extreme_logits(backend, dtype).requires_grad_()
    t = torch.tensor([1, 2, 3], device=x.device)
    out = ops.lse_aggregate(x, backend=backend)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), _ref_lse(x.detach()), rtol=1e-5, atol=1e-3)
    loss = ops.lse_aggregate_nll(x, t, "sum", backend=backend)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.double(), _ref_nll(x.detach(), t, "sum"), rtol=1e-5, atol=1e-3)
    loss.backward()
    assert torch.isfinite(x.grad.float()).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradcheck_float64(backend, seed):
    torch.manual_seed(seed)
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 4, (2,))
    assert torch.autograd.gradcheck(lambda v: ops.lse_aggregate(v, backend=backend), (x,))
    assert torch.autograd.gradcheck(lambda v: ops.lse_aggregate_nll(v, t, "mean", backend=backend), (x,))
    assert torch.autograd.gradcheck(lambda v: ops.lse_aggregate_nll(v, t, "none", backend=backend), (x,))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", ["lse", "mean", "max"])
def test_clip_aggregate_modes(backend, mode):
    x = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    out = ops.clip_aggregate(x, mode, backend=backend)
    x64 = x.detach()
    pooled = {"mean": x64.mean(1), "max": x64.amax(1)}
    ref = _ref_lse(x64) if mode == "lse" else torch.log_softmax(pooled[mode], -1)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(3, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda v: ops.clip_aggregate(v, mode, backend=backend), (x,))
    assert ops.clip_aggregate(x.float(), mode, backend=backend).dtype == torch.float32


def test_lse_is_exact_log_of_eq5():
    # Eq. 5: p[b, k] = sum_n exp(s[b, n, k]) / sum_{n, k'} exp(s[b, n, k']).
    s = torch.randn(2, 3, 4, dtype=torch.float64)
    p = s.exp().sum(1) / s.exp().sum((1, 2))[:, None]
    torch.testing.assert_close(ops.lse_aggregate(s).exp(), p, rtol=1e-12, atol=1e-12)
    assert _backend.resolve(None, s.device) in ("cpu", "reference")
