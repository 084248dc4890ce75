"""lse_aggregate_nll_value_and_grad on every backend available here: the loss and its gradient against a
float64 autograd reference, and against lse_aggregate_nll through autograd."""

import pytest
import torch
import torch.nn.functional as F
from ops_cases import CPU_BACKENDS, CUDA, device_for, extreme_logits, needs_triton

from clipbert import ops

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
# The gradient is rounded to the input dtype; the loss is float32 (float64 for float64 logits).
GRAD_TOL = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3, torch.float64: 1e-10}
LOSS_TOL = {torch.float64: 1e-10}


def _shapes(backend):
    # Odd sizes, the retrieval shape, a row long enough for the CUDA kernel's block-per-row path, and one
    # past its single-block limit (B*N*K > 2^16); the Triton interpreter is slow: the small ones only.
    small = [(3, 5, 7), (1, 1, 1), (2, 16, 2)]
    return small if backend == "triton" else small + [(128, 16, 2), (5, 3, 131), (4, 9, 1540), (600, 16, 8)]


def _ref(x, t, reduction):
    """float64 (loss, d loss.sum() / d x) by autograd of the plain PyTorch formula (paper Eq. 5-6)."""
    x64 = x.detach().double().requires_grad_()
    log_p = torch.logsumexp(x64, 1) - torch.logsumexp(x64.flatten(1), 1, keepdim=True)
    loss = F.nll_loss(log_p, t, reduction=reduction)
    (g,) = torch.autograd.grad(loss.sum(), x64)
    return loss.detach(), g


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, CUDA])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_value_and_grad_match_float64(backend, dtype, reduction):
    for shape in _shapes(backend):
        B, _, K = shape
        x = (torch.randn(shape, device=device_for(backend)) * 3).to(dtype)
        t = torch.randint(0, K, (B,), device=x.device)
        loss, g = ops.lse_aggregate_nll_value_and_grad(x, t, reduction, backend=backend)
        loss_ref, g_ref = _ref(x, t, reduction)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        assert loss.dtype == acc and loss.shape == loss_ref.shape, (shape, loss.shape)
        assert g.dtype == dtype and g.shape == shape and g.is_contiguous()
        tol = LOSS_TOL.get(dtype, 2e-5)
        torch.testing.assert_close(loss.double(), loss_ref, rtol=tol, atol=tol, msg=f"loss at {shape}")
        tol = GRAD_TOL[dtype]
        torch.testing.assert_close(g.double(), g_ref, rtol=tol, atol=tol, msg=f"grad at {shape}")


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, CUDA])
def test_equals_lse_aggregate_nll_through_autograd(backend):
    x = torch.randn(6, 4, 5, device=device_for(backend), requires_grad=True)
    t = torch.tensor([0, 4, 2, 1, 3, 3], device=x.device)
    loss, g = ops.lse_aggregate_nll_value_and_grad(x, t, backend=backend)
    assert not loss.requires_grad and not g.requires_grad  # values, no graph, even for a grad-requiring input
    loss_ag = ops.lse_aggregate_nll(x, t, backend=backend)
    (g_ag,) = torch.autograd.grad(loss_ag, x)
    torch.testing.assert_close(loss, loss_ag.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g, g_ag, rtol=1e-6, atol=1e-7)
    # The documented use: drive backward with the returned gradient.
    x.backward(g)
    torch.testing.assert_close(x.grad, g_ag)


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, CUDA])
def test_non_contiguous_logits(backend):
    base = torch.randn(3, 7, 10, device=device_for(backend), dtype=torch.float64)
    for x in (base.transpose(1, 2), base[:, ::2, 1:8], base[::2]):
        assert not x.is_contiguous()
        t = torch.arange(x.shape[0], device=x.device) % x.shape[2]
        loss, g = ops.lse_aggregate_nll_value_and_grad(x, t, "sum", backend=backend)
        loss_ref, g_ref = _ref(x, t, "sum")
        torch.testing.assert_close(loss, loss_ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, CUDA])
def test_empty_batch(backend):
    x = torch.randn(0, 4, 3, device=device_for(backend))
    t = torch.zeros(0, dtype=torch.int64, device=x.device)
    loss, g = ops.lse_aggregate_nll_value_and_grad(x, t, "none", backend=backend)
    assert loss.shape == (0,) and g.shape == (0, 4, 3)
    assert ops.lse_aggregate_nll_value_and_grad(x, t, "sum", backend=backend)[0].item() == 0.0
    mean = ops.lse_aggregate_nll_value_and_grad(x, t, "mean", backend=backend)[0]
    assert torch.isnan(mean)  # as F.nll_loss


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, CUDA])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_logits_are_finite(backend, dtype):
    x = extreme_logits(backend, dtype)
    t = torch.tensor([1, 2, 3], device=x.device)
    loss, g = ops.lse_aggregate_nll_value_and_grad(x, t, "sum", backend=backend)
    loss_ref, g_ref = _ref(x, t, "sum")
    assert torch.isfinite(loss) and torch.isfinite(g.float()).all()
    torch.testing.assert_close(loss.double(), loss_ref, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(g.double(), g_ref, rtol=1.6e-2, atol=1.6e-2)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bad_inputs_raise_naming_the_argument(backend):
    x = torch.randn(2, 3, 4)
    t = torch.tensor([0, 3])
    vg = ops.lse_aggregate_nll_value_and_grad
    # Python backends raise ValueError, the C++ kernel RuntimeError; both name the op and the argument.
    with pytest.raises((ValueError, RuntimeError), match=r"logits must be \[B, N, K\].*\[2, 12\]"):
        vg(x.flatten(1), t, backend=backend)
    with pytest.raises((ValueError, RuntimeError), match=r"target must be \[B\] = \[2\], got \[2, 1\]"):
        vg(x, t[:, None], backend=backend)
    with pytest.raises((ValueError, RuntimeError), match=r"target\[1\] = 4 is outside \[0, K\) = \[0, 4\)"):
        vg(x, torch.tensor([0, 4]), backend=backend)
    with pytest.raises(ValueError, match="reduction must be one of"):
        vg(x, t, "avg", backend=backend)
    with pytest.raises(TypeError, match="logits must be a Tensor"):
        vg([[1.0]], t, backend=backend)


@pytest.mark.parametrize("ns", ["clipbert", pytest.param("clipbert_triton", marks=needs_triton)])
def test_opcheck(ns):
    from clipbert.ops import _triton_ops  # noqa: F401  (registers clipbert_triton)

    op = getattr(torch.ops, ns).lse_aggregate_nll_value_and_grad
    x = torch.randn(3, 4, 5)
    t = torch.tensor([0, 4, 2])
    for args in ((x, t, 0), (x, t, 1), (x.transpose(1, 2).contiguous().transpose(1, 2), t, 2)):
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def step(logits, target):
        loss, g = ops.lse_aggregate_nll_value_and_grad(logits * 2, target, backend="cpu")
        return loss, g * 2  # chain rule through the scaling, by hand

    x = torch.randn(3, 4, 5)
    t = torch.tensor([1, 0, 4])
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for a, b in zip(compiled(x, t), step(x, t)):
        torch.testing.assert_close(a, b)
    xg = x.clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(ops.lse_aggregate_nll(xg * 2, t), xg)
    torch.testing.assert_close(compiled(x, t)[1], g_ref)


def test_cuda_single_block_batch_reduction_is_deterministic():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    x = torch.randn(128, 16, 2, device="cuda", dtype=torch.bfloat16)
    t = torch.randint(0, 2, (128,), device="cuda")
    first = ops.lse_aggregate_nll_value_and_grad(x, t, backend="cuda")
    for _ in range(5):
        again = ops.lse_aggregate_nll_value_and_grad(x, t, backend="cuda")
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
