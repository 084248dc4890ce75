"""Non-finite logits and higher-order gradients on every backend: a NaN logit makes its row NaN (never a
confident class), a class that is -inf in every clip is -inf, a row of -inf is NaN, as the float64
reference says; and a second derivative through a fused kernel is exact or an error, never a silent 0."""

import pytest
import torch
import torch.nn.functional as F
from ops_cases import CPU_BACKENDS, CUDA, device_for

from clipbert import ops

NAN, INF = float("nan"), float("inf")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# The Triton interpreter runs slowly: float32 only there
CASES = [(b, d) for b in CPU_BACKENDS for d in DTYPES if b != "triton" or d == torch.float32]
CASES += [pytest.param("cuda", d, marks=pytest.mark.needs_cuda) for d in DTYPES]


def _ref_log_p(x):
    x = x.double()
    return torch.logsumexp(x, 1) - torch.logsumexp(x.flatten(1), 1, keepdim=True)


def _logits(backend, dtype, K):
    """[5, 3, K]: row 0 a NaN in one clip of class 1, row 1 class 2 masked (-inf) in every clip, row 2 every
    logit -inf, row 3 a +inf logit, row 4 finite."""
    x = torch.randn(5, 3, K, device=device_for(backend))
    x[0, 1, 1] = NAN
    x[1, :, 2] = -INF
    x[2] = -INF
    x[3, 2, 0] = INF
    return x.to(dtype)


@pytest.mark.parametrize("backend,dtype", CASES)
@pytest.mark.parametrize("K", [3, 8])  # the CPU kernel takes a column at a time below 4 classes
def test_non_finite_logits_give_the_references_non_finite_outputs(backend, dtype, K):
    x = _logits(backend, dtype, K)
    out = ops.lse_aggregate(x, backend=backend).double()
    ref = _ref_log_p(x)
    # NaN (row 0, row 2), -inf (row 1's masked class) and finite values as the reference has them
    for row in (0, 1, 2, 4):
        torch.testing.assert_close(out[row], ref[row], rtol=1e-5, atol=1e-5, equal_nan=True)
    assert out[0].isnan().all()  # the NaN's class is not the argmax with log p = 0 (the CPU kernel's was)
    assert not out[3].isfinite().any()  # +inf: the reference's [nan, -inf, ...], or NaN throughout
    # the NLL per row: NaN, inf where the target class is masked, NaN for the masked row
    t = torch.tensor([0, 2, 0, 1, 1], device=x.device)
    loss = ops.lse_aggregate_nll(x, t, "none", backend=backend).double()
    ref_loss = F.nll_loss(ref, t, reduction="none")
    for row in (0, 1, 2, 4):
        torch.testing.assert_close(loss[row], ref_loss[row], rtol=1e-5, atol=1e-5, equal_nan=True)
    assert loss[1] == INF and not loss[3].isfinite()


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, CUDA])
def test_a_non_finite_row_leaves_the_other_rows_gradients_alone(backend):
    x = _logits(backend, torch.float32, 8).requires_grad_()
    x64 = x.detach().double().requires_grad_()
    t = torch.tensor([0, 2, 0, 1, 1], device=x.device)
    (g,) = torch.autograd.grad(ops.lse_aggregate_nll(x, t, "none", backend=backend)[4], x)
    (g64,) = torch.autograd.grad(F.nll_loss(_ref_log_p(x64), t, reduction="none")[4], x64)
    # (rows 0-3 get 0 times their non-finite terms, NaN in the reference too: a training step skips a
    # non-finite loss whole)
    torch.testing.assert_close(g[4].double(), g64[4], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "reference"] + [CUDA])
def test_double_backward_through_the_lse_kernels_is_an_error(backend):
    x = torch.randn(2, 3, 4, device=device_for(backend), requires_grad=True)
    t = torch.tensor([1, 3], device=x.device)
    for loss in (
        ops.lse_aggregate(x, backend=backend)[:, 1].sum(),
        ops.lse_aggregate_nll(x, t, backend=backend),
    ):
        # the C++ ops refuse to run their backward under create_graph; Triton's backward op has no formula
        with pytest.raises(
            RuntimeError, match="double backward .create_graph=True. is not supported|no autograd"
        ):
            (g,) = torch.autograd.grad(loss, x, create_graph=True)
            torch.autograd.grad((g * g).sum(), x)
    # a plain backward is not affected
    (g,) = torch.autograd.grad(ops.lse_aggregate_nll(x, t, backend=backend), x)
    assert g.isfinite().all()


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, CUDA])
def test_temporal_mean_second_derivatives_are_exact(backend):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, device=device_for(backend), requires_grad=True)
    w = torch.randn(2, 4, 5, dtype=torch.float64, device=x.device)

    def fn(v):  # the output times a function of the input: its second derivative runs through the backward
        return ops.temporal_mean(v, backend=backend) * w * v.sum()

    if backend == "triton":  # its backward op has no formula: an error, as for the lse ops
        with pytest.raises(RuntimeError, match="no autograd formula"):
            torch.autograd.gradgradcheck(fn, (x,))
    else:
        assert torch.autograd.gradgradcheck(fn, (x,))
