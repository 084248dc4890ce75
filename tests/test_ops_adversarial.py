"""Adversarial inputs on every CPU-runnable backend (C++, Triton under the interpreter, reference) against
float64 references written here: logits at the dtype's max, -inf target columns, NaN/inf rows next to
finite ones, stride-0 and transposed inputs, exact ties of max pooling, and float32 accumulation limits."""

import pytest
import torch
import torch.nn.functional as F
from ops_cases import CPU_BACKENDS, CUDA

from clipbert import ops

NAN, INF = float("nan"), float("inf")


def _ref_log_p(x):
    x = x.double()
    return torch.logsumexp(x, 1) - torch.logsumexp(x.flatten(1), 1, keepdim=True)


def _max_logits(dtype):
    """[2, 3, 2]: row 0 one logit at +max and the rest at -max, so lse_k - lse_all of class 1 (-2 max)
    overflows to -inf while its logits' softmax over the clips is a plain 1/3; row 1 ordinary."""
    m = torch.finfo(dtype).max
    x = torch.randn(2, 3, 2).to(dtype)
    x[0] = -m
    x[0, 0, 0] = m
    return x


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, CUDA])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_lse_aggregate_grad_at_the_dtypes_max_is_the_references(backend, dtype):
    # The backward took x - lse_k as (x - lse_all) - out_k: -inf - -inf = NaN for class 1 of row 0, where the
    # reference's (and the float64 one's) gradient is the finite softmax over clips. (CUDA: the same fix-up
    # pass, compiled in CI, run on a GPU only.)
    device = "cuda" if backend == "cuda" else "cpu"
    x = _max_logits(dtype).to(device).requires_grad_()
    x64 = x.detach().cpu().double().requires_grad_()
    w = torch.randn(2, 2, dtype=torch.float64)
    out = ops.lse_aggregate(x, backend=backend)
    (g,) = torch.autograd.grad((out * w.to(out)).sum(), x)
    (g_ref,) = torch.autograd.grad((_ref_log_p(x64) * w).sum(), x64)
    assert g_ref.isfinite().all()
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(g.cpu().double(), g_ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_masked_target_column_gives_an_infinite_loss_and_nan_gradient_in_its_row_only(backend):
    # Triton's clamp of x - lse_t used tl.minimum, which drops a NaN: -inf - -inf in a target column that is
    # -inf in every clip became a finite -w per clip, where the C++ kernel and the reference give NaN.
    x = torch.randn(3, 4, 5)
    x[0, :, 2] = -INF
    t = torch.tensor([2, 1, 4])
    x64 = x.double().requires_grad_()
    ref = F.nll_loss(_ref_log_p(x64), t, reduction="none")
    (g_ref,) = torch.autograd.grad(ref.sum(), x64)
    assert g_ref[0, :, 2].isnan().all()  # what the float64 reference says
    xg = x.clone().requires_grad_()
    loss = ops.lse_aggregate_nll(xg, t, "none", backend=backend)
    (g,) = torch.autograd.grad(loss.sum(), xg)
    loss_vg, g_vg = ops.lse_aggregate_nll_value_and_grad(x, t, "none", backend=backend)
    for lo, gr in ((loss, g), (loss_vg, g_vg)):
        assert lo[0] == INF
        torch.testing.assert_close(lo[1:].double(), ref[1:].detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gr.double(), g_ref, rtol=1e-5, atol=1e-6, equal_nan=True)
        assert gr[1:].isfinite().all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_non_finite_samples_do_not_leak_into_the_others(backend, reduction):
    # rows 0-3: a NaN logit, a +inf logit, every logit -inf, every logit +inf; rows 4-5 finite, and each op's
    # values and gradients there are the float64 reference's. Row 5 is -inf in one whole clip.
    x = torch.randn(6, 3, 5)
    x[0, 1, 3] = NAN
    x[1, 2, 0] = INF
    x[2] = -INF
    x[3] = INF
    x[5, 1] = -INF
    t = torch.tensor([3, 1, 0, 2, 4, 0])
    xg = x.clone().requires_grad_()
    x64 = x.double().requires_grad_()
    out = ops.lse_aggregate(xg, backend=backend)
    ref = _ref_log_p(x64)
    assert not out[:4].isfinite().all(dim=1).any()
    torch.testing.assert_close(out[4:].double(), ref[4:], rtol=1e-5, atol=1e-5)
    (g,) = torch.autograd.grad(out[4:].sum(), xg)
    (g_ref,) = torch.autograd.grad(ref[4:].sum(), x64)
    # (rows 0-3 get 0 times their non-finite terms: NaN on some backends and in torch's float64 autograd too)
    torch.testing.assert_close(g[4:].double(), g_ref[4:], rtol=1e-5, atol=1e-6)
    # the NLL: only the rows' own losses are non-finite, and a finite row's gradient is the reference's
    loss = ops.lse_aggregate_nll(xg, t, "none", backend=backend)
    assert not loss[:4].isfinite().any() and loss[4:].isfinite().all()
    (g,) = torch.autograd.grad(loss[4:].sum(), xg)
    (g_ref,) = torch.autograd.grad(F.nll_loss(_ref_log_p(x64), t, reduction="none")[4:].sum(), x64)
    torch.testing.assert_close(g[4:].double(), g_ref[4:], rtol=1e-5, atol=1e-6)
    # a reduced loss is non-finite, but its gradient is non-finite in rows 0-3 only
    for fn in (
        lambda: torch.autograd.grad(ops.lse_aggregate_nll(xg, t, reduction, backend=backend).sum(), xg)[0],
        lambda: ops.lse_aggregate_nll_value_and_grad(x, t, reduction, backend=backend)[1],
    ):
        grad = fn()
        assert grad[4:].isfinite().all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_degenerate_and_strided_inputs_agree_with_float64(backend):
    base = torch.randn(4, 5, 3)
    cases = [
        torch.randn(1, 1, 1),
        torch.randn(3, 1, 4),  # N = 1
        torch.randn(3, 4, 1),  # K = 1: out is 0, the loss 0
        torch.randn(1, 2, 3).expand(3, 2, 3),  # stride-0 batch
        torch.randn(3, 1, 4).expand(3, 2, 4),  # stride-0 clips
        torch.randn(3, 2, 1).expand(3, 2, 4),  # stride-0 classes
        base.transpose(1, 2),
        base.permute(2, 0, 1),  # batch innermost
        torch.randn(2, 6, 10)[:, ::2, 1::3],
        (torch.randn(2, 3, 4) * 1e-40).float(),  # denormals: uniform probabilities
    ]
    for x in cases:
        x = x.requires_grad_()
        B, _, K = x.shape
        t = torch.arange(B) % K
        x64 = x.detach().double().requires_grad_()
        out = ops.lse_aggregate(x, backend=backend)
        loss = ops.lse_aggregate_nll(x, t, "sum", backend=backend)
        ref = _ref_log_p(x64)
        ref_loss = F.nll_loss(ref, t, reduction="sum")
        assert out.dtype == loss.dtype == torch.float32 and out.shape == (B, K) and loss.shape == ()
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-5)
        w = torch.randn(B, K, dtype=torch.float64)
        (g,) = torch.autograd.grad((out * w.float()).sum() + loss, x)
        (g_ref,) = torch.autograd.grad((ref * w).sum() + ref_loss, x64, retain_graph=True)
        assert g.shape == x.shape and g.dtype == x.dtype
        torch.testing.assert_close(g.double(), g_ref, rtol=1e-5, atol=1e-5)
        _, g_vg = ops.lse_aggregate_nll_value_and_grad(x.detach(), t, "sum", backend=backend)
        (g_ref,) = torch.autograd.grad(ref_loss, x64)
        assert g_vg.is_contiguous() and g_vg.shape == x.shape
        torch.testing.assert_close(g_vg.double(), g_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_max_pooling_splits_the_gradient_evenly_between_tied_clips(backend):
    # The documented convention (torch.amax's): clips tied at the max share its gradient equally.
    x = torch.tensor([[[1.0, 2.0], [1.0, 0.0], [0.5, 2.0]]], dtype=torch.float64, requires_grad=True)
    out = ops.clip_aggregate(x, "max", backend=backend)
    (g,) = torch.autograd.grad(out[0, 0] - out[0, 1], x)
    # d(out0 - out1) / d pooled = [1, -1] (the log-softmax's normalizer cancels); clip 0 ties clip 1 for
    # class 0 and clip 2 for class 1
    expected = torch.tensor([[[0.5, -0.5], [0.5, 0.0], [0.0, -0.5]]], dtype=torch.float64)
    torch.testing.assert_close(g, expected)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_temporal_mean_accumulates_in_float32_and_overflows_as_the_reference(backend, dtype):
    # Documented: the sum over T is float32, so features near float32's max sum to inf on every backend.
    x = torch.full((2, 3, 4), torch.finfo(dtype).max * 0.9, dtype=dtype)
    assert ops.temporal_mean(x, backend=backend).isinf().all()
    # channels-last frames, T = 1 and stride-0 frames are read in place and match the float64 mean
    frames = torch.randn(6, 8, 5, 7).contiguous(memory_format=torch.channels_last).unflatten(0, (2, 3))
    for v in (frames, frames[:, :1], torch.randn(2, 1, 4, 5).expand(2, 3, 4, 5)):
        torch.testing.assert_close(ops.temporal_mean(v, backend=backend).double(), v.double().mean(1))


@pytest.mark.parametrize("backend", CPU_BACKENDS)  # (the CUDA kernels assert on the device instead)
def test_out_of_range_and_int32_targets_raise_naming_the_entry(backend):
    x = torch.randn(3, 2, 4)
    for op in (ops.lse_aggregate_nll, ops.lse_aggregate_nll_value_and_grad):
        for bad, entry in ((-1, -1), (4, 4), (2**40, 2**40)):
            with pytest.raises(
                (ValueError, RuntimeError), match=rf"target\[1\] = {entry} is outside \[0, K\)"
            ):
                op(x, torch.tensor([0, bad, 2]), "none", backend=backend)
        with pytest.raises((ValueError, RuntimeError), match="target must be (an )?int64"):
            op(x, torch.tensor([0, 1, 2], dtype=torch.int32), "none", backend=backend)
