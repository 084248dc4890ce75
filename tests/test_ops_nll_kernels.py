"""The CUDA NLL kernels' variants (clipbert.ops.set_nll_kernel): every variant, on shapes that reach each of
its launch paths, against float64; and the switch itself, which needs no GPU."""

import pytest
import torch
import torch.nn.functional as F
from ops_cases import needs_triton

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


@needs_triton
@pytest.mark.parametrize("contiguous", [True, False])
def test_triton_nll_over_rows_longer_than_a_block(contiguous):
    # lse_nll.py reads a row as flat chunks of at most 4,096 logits (the backward: 2,048): a row of 4,500
    # spans one and a partial second (the backward's: two and a partial third), and the strided layout takes
    # each offset through (n, k).
    from clipbert.ops._backend import triton_available

    if not triton_available(torch.device("cpu")):
        pytest.skip("triton not importable under TRITON_INTERPRET=1 here")
    from clipbert.ops.triton import lse_nll

    B, N, K = 3, 3, 1500
    assert lse_nll.MAX_BLOCK < N * K and 2 * lse_nll.BWD_BLOCK < N * K
    x = torch.randn(B, K, N) * 4  # [B, K, N] transposed: [B, N, K] with strides (N*K, 1, N)
    x = x.transpose(1, 2) if not contiguous else x.transpose(1, 2).contiguous()
    assert x.is_contiguous() == contiguous
    t = torch.tensor([0, K - 1, 745])
    x64 = x.double().requires_grad_()
    ref = _ref_nll(x64, t, "none")
    (g_ref,) = torch.autograd.grad(ref.sum(), x64)

    xg = x.clone().requires_grad_() if contiguous else x.detach().requires_grad_()
    loss = ops.lse_aggregate_nll(xg, t, "none", backend="triton")
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=2e-5)
    (g,) = torch.autograd.grad(loss.sum(), xg)
    torch.testing.assert_close(g.double(), g_ref, rtol=2e-5, atol=2e-5)
    value, grad = ops.lse_aggregate_nll_value_and_grad(x, t, "mean", backend="triton")
    torch.testing.assert_close(value.double(), ref.detach().mean(), rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(grad.double(), g_ref / B, rtol=2e-5, atol=2e-5)


@needs_triton
def test_triton_nll_kernels_compile_for_sm90_with_128_bit_loads():
    # The interpreter never lowers the kernels; compile them for an H100/H200 as a launch specializes them
    # (in a subprocess: TRITON_INTERPRET=1 is set for this test session) and check that the contiguous bf16
    # and fp32 rows move 128 bits a load: 4,096 logits over 128 threads are 32 a thread, 4 (bf16) or 8 (fp32)
    # 16-byte loads. The backward's 2,048 are 16 a thread.
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import json; from clipbert.ops.triton import compile_check as c; print(json.dumps(c.check(90)))"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {(r["kernel"], r["dtype"]): r for r in json.loads(proc.stdout.strip().splitlines()[-1])}
    assert len(rows) == 9  # every kernel compiled, strided fp64 included
    for dtype, per_load in (("bf16", 8), ("fp32", 4)):
        assert rows[("nll_fwd", dtype)]["v4_loads"] == 4096 // 128 // per_load
        assert (
            rows[("nll_bwd", dtype)]["v4_loads"]
            == rows[("nll_bwd", dtype)]["v4_stores"]
            == 2048 // 128 // per_load
        )
        # value-and-grad: the reduction pass and the gradient pass each load the chunk
        assert rows[("nll_value_and_grad", dtype)]["v4_loads"] == 2 * 4096 // 128 // per_load
