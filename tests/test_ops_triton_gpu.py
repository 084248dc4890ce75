"""The Triton kernels compiled for a GPU (not the CPU interpreter the other op tests use): every op, its
gradient and the value-and-grad op against float64 references on CUDA tensors. Few shapes and dtypes,
since each specialization is a JIT compile on the GPU machine."""

import pytest
import torch
import torch.nn.functional as F

from clipbert import ops

pytestmark = pytest.mark.needs_cuda

# (logits shape, dtype): a warp-sized row, a long odd row, and bf16 as training runs it.
LSE_CASES = [((128, 16, 2), torch.float32), ((5, 3, 131), torch.float32), ((4, 9, 1540), torch.bfloat16)]
GRAD_TOL = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2}


def _ref_log_p(x64):
    return torch.logsumexp(x64, 1) - torch.logsumexp(x64.flatten(1), 1, keepdim=True)


@pytest.fixture(autouse=True)
def _compiled_triton():
    import os

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1: these tests are for kernels compiled for the GPU")


@pytest.mark.parametrize("shape,dtype", LSE_CASES)
def test_lse_aggregate_and_nll(shape, dtype):
    B, _, K = shape
    x = (torch.randn(shape, device="cuda") * 3).to(dtype).requires_grad_()
    t = torch.randint(0, K, (B,), device="cuda")
    x64 = x.detach().double().requires_grad_()
    out = ops.lse_aggregate(x, backend="triton")
    ref = _ref_log_p(x64)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=2e-5)
    w = torch.randn_like(ref)
    (g,) = torch.autograd.grad((out * w.float()).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), x64)
    torch.testing.assert_close(g.double(), g_ref, rtol=GRAD_TOL[dtype], atol=GRAD_TOL[dtype])
    for reduction in ("mean", "none"):
        loss = ops.lse_aggregate_nll(x, t, reduction, backend="triton")
        loss_ref = F.nll_loss(_ref_log_p(x64), t, reduction=reduction)
        torch.testing.assert_close(loss.double(), loss_ref, rtol=1e-5, atol=2e-5)
        (g,) = torch.autograd.grad(loss.sum(), x)
        (g_ref,) = torch.autograd.grad(loss_ref.sum(), x64)
        torch.testing.assert_close(g.double(), g_ref, rtol=GRAD_TOL[dtype], atol=GRAD_TOL[dtype])
        loss_vg, g_vg = ops.lse_aggregate_nll_value_and_grad(x, t, reduction, backend="triton")
        torch.testing.assert_close(loss_vg.double(), loss_ref, rtol=1e-5, atol=2e-5)
        torch.testing.assert_close(g_vg.double(), g_ref, rtol=GRAD_TOL[dtype], atol=GRAD_TOL[dtype])


def test_value_and_grad_float64_mean_scale_is_exact():
    # The 1/B of the mean must be applied in float64 for float64 logits, not as a float32 kernel scalar.
    x = torch.randn(3, 4, 5, device="cuda", dtype=torch.float64)
    t = torch.tensor([0, 4, 2], device="cuda")
    x64 = x.clone().requires_grad_()
    loss_ref = F.nll_loss(_ref_log_p(x64), t)
    (g_ref,) = torch.autograd.grad(loss_ref, x64)
    loss, g = ops.lse_aggregate_nll_value_and_grad(x, t, backend="triton")
    torch.testing.assert_close(loss, loss_ref.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape,dtype", [((2, 3, 5, 7), torch.float32), ((8, 2, 256, 7, 7), torch.bfloat16)])
def test_temporal_mean(shape, dtype):
    x = torch.randn(shape, device="cuda").to(dtype).requires_grad_()
    y = ops.temporal_mean(x, backend="triton")
    tol = 1e-6 if dtype == torch.float32 else 8e-3
    torch.testing.assert_close(y.double(), x.detach().double().mean(1), rtol=tol, atol=tol)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    expected = (g.double() / shape[1]).unsqueeze(1).expand(shape)
    torch.testing.assert_close(gx.double(), expected, rtol=tol, atol=tol)


def test_an_out_of_range_target_is_a_device_assert_not_a_silent_read():
    # The Triton NLL kernels index the target column unchecked: target = K read the next row's logits
    # (2026-11-28 review). lse.py now asserts on the device, which ends the CUDA context: a subprocess.
    import os
    import subprocess
    import sys

    code = (
        "import torch; from clipbert import ops\n"
        "x = torch.randn(2, 3, 4, device='cuda'); t = torch.tensor([0, 4], device='cuda')\n"
        "for op in (lambda: ops.lse_aggregate_nll(x, t, backend='triton'),\n"
        "           lambda: ops.lse_aggregate_nll_value_and_grad(x, t, backend='triton')):\n"
        "    try:\n"
        "        op(); torch.cuda.synchronize(); print('NO ERROR')\n"
        "    except RuntimeError as err:\n"
        "        print('ERROR', str(err).splitlines()[0]); break\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "NO ERROR" not in proc.stdout, proc.stdout
    assert "ERROR" in proc.stdout or proc.returncode != 0, (proc.stdout, proc.stderr[-2000:])
