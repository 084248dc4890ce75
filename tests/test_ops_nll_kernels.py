"""The CUDA NLL kernels' variants (clipbert.ops.set_nll_kernel): every variant, on shapes that reach each of
its launch paths, against float64; and the switch itself, which needs no GPU."""

import pytest
import torch
import torch.nn.functional as F

from clipbert import ops
from clipbert.ops import _backend

GRAD_TOL = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}

# (shape, dtype, the launch it reaches under "resident"); vectors are 16 bytes: 8 bf16/fp16, 4 fp32 values.
PATHS = [
    ((64, 16, 100), torch.bfloat16, "resident 256 threads x 4 (200 vectors a row)"),
    ((8, 16, 800), torch.bfloat16, "resident 256 x 8 (1,600 vectors)"),
    ((6, 16, 1540), torch.bfloat16, "resident 512 x 8 (3,080 vectors, the benchmark's row)"),
    ((6, 16, 1540), torch.float16, "resident 512 x 8, fp16"),
    ((8, 16, 800), torch.float32, "resident 512 x 8, fp32 (3,200 vectors)"),
    ((4, 16, 2100), torch.bfloat16, "streams: 4,200 vectors is past the resident limit"),
    ((6, 15, 1539), torch.bfloat16, "streams: a row of 23,085 values is not whole vectors"),
    ((300, 8, 5), torch.bfloat16, "warp rows of 40 values"),
    ((16, 16, 2), torch.bfloat16, "one block for the whole batch"),
]


def _ref_nll(x64, t, reduction):
    lse = torch.logsumexp(x64, 1) - torch.logsumexp(x64.flatten(1), 1, keepdim=True)
    return F.nll_loss(lse, t, reduction=reduction)


def _case(shape, dtype):
    B, _, K = shape
    x = (torch.randn(shape, device="cuda") * 4).to(dtype)
    t = torch.randint(0, K, (B,), device="cuda")
    t[0], t[-1] = 0, K - 1  # the first and last columns, where a vector's column count wraps
    return x, t


@pytest.fixture
def nll_kernel(request):
    previous = ops.set_nll_kernel(request.param)
    yield request.param
    ops.set_nll_kernel(previous)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("nll_kernel", ops.NLL_KERNELS, indirect=True)
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("shape,dtype,path", PATHS, ids=[p[2] for p in PATHS])
def test_every_variant_matches_float64(nll_kernel, reduction, shape, dtype, path):
    x, t = _case(shape, dtype)
    x64 = x.double().requires_grad_()
    ref = _ref_nll(x64, t, reduction)
    w = torch.rand_like(ref) + 0.5
    (g_ref,) = torch.autograd.grad((ref * w).sum(), x64)
    tol = GRAD_TOL[dtype]

    def close(got, want, tol, what):
        msg = f"{nll_kernel}, {path}: {what}"
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol, msg=msg)

    xg = x.clone().requires_grad_()
    loss = ops.lse_aggregate_nll(xg, t, reduction, backend="cuda")
    close(loss, ref.detach(), 2e-5, "loss")
    (g,) = torch.autograd.grad((loss * w.float()).sum(), xg)
    close(g, g_ref, tol, "gradient")

    # The value-and-grad op's gradient is that of the loss itself (weights of one).
    (g1_ref,) = torch.autograd.grad(ref.sum(), x64)
    value, grad = ops.lse_aggregate_nll_value_and_grad(x, t, reduction, backend="cuda")
    close(value, ref.detach(), 2e-5, "value-and-grad value")
    close(grad, g1_ref, tol, "value-and-grad gradient")


@pytest.mark.needs_cuda
@pytest.mark.parametrize("nll_kernel", ops.NLL_KERNELS, indirect=True)
def test_every_variant_is_finite_on_extreme_rows(nll_kernel):
    x, t = _case((6, 16, 1540), torch.bfloat16)
    x[0] *= 1e3
    x[1, 3] = 1e4
    x[2] = -1e4
    loss, grad = ops.lse_aggregate_nll_value_and_grad(x, t, "none", backend="cuda")
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all(), nll_kernel
    ref = _ref_nll(x.double(), t, "none")
    torch.testing.assert_close(loss.double(), ref, rtol=1e-4, atol=1e-2)


def test_set_nll_kernel_validates_and_returns_the_previous_choice():
    previous = ops.set_nll_kernel("stream2")
    try:
        assert ops.get_nll_kernel() == "stream2"
        assert ops.set_nll_kernel("resident") == "stream2"
        with pytest.raises(ValueError, match=r"nll kernel must be one of .*'fast'"):
            ops.set_nll_kernel("fast")
        assert ops.get_nll_kernel() == "resident"
    finally:
        ops.set_nll_kernel(previous)


def test_environment_sets_the_start_value_and_a_bad_one_names_the_variable(monkeypatch):
    saved = dict(_backend._nll_kernel)
    try:
        _backend._nll_kernel.clear()
        monkeypatch.setenv(_backend.NLL_KERNEL_ENV, "stream4")
        assert ops.get_nll_kernel() == "stream4"
        _backend._nll_kernel.clear()
        monkeypatch.setenv(_backend.NLL_KERNEL_ENV, "stream3")
        with pytest.raises(ValueError, match="CLIPBERT_NLL_KERNEL must be one of"):
            ops.get_nll_kernel()
    finally:
        _backend._nll_kernel.clear()
        _backend._nll_kernel.update(saved)


def test_the_compiled_switch_round_trips_and_rejects_unknown_codes():
    # clipbert._cuda loads without a GPU where it was built (CI builds it), so its switch is testable here.
    try:
        import clipbert._cuda as cuda_ext
    except ImportError as err:
        pytest.skip(f"clipbert._cuda not built: {err}")
    previous = cuda_ext._set_nll_kernel(ops.NLL_KERNELS.index("resident"))
    try:
        assert cuda_ext._set_nll_kernel(ops.NLL_KERNELS.index("stream2")) == ops.NLL_KERNELS.index("resident")
        with pytest.raises(ValueError, match=r"kernel must be 0 \(auto\), 1 \(stream2\), 2 \(stream4\)"):
            cuda_ext._set_nll_kernel(len(ops.NLL_KERNELS))
    finally:
        cuda_ext._set_nll_kernel(previous)
