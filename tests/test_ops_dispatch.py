"""Backend selection, error messages, opcheck on every registered op, and torch.compile(fullgraph=True)."""

import types
import warnings

import pytest
import torch
from ops_cases import TRITON, needs_triton

from clipbert import ops
from clipbert.ops import _backend


# setup.py always builds clipbert._C, so a missing build must fail the suite rather than skip it.
def test_native_cpu_kernels_are_built():
    assert ops.native_available("cpu"), "clipbert._C did not build or load; run `make setup`"


@pytest.fixture
def restore_backend():
    before = ops.get_backend()
    yield
    ops.set_backend(before)


def test_compiled_ops_take_the_cpp_autograd_path():
    # Autograd of the compiled ops is registered in C++ (csrc/ops/autograd.cpp): no Python runs between a
    # forward and its backward, and the graph node is the C++ Function, not a Python custom-op node.
    x = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    frames = torch.randn(3, 2, 5, dtype=torch.float64, requires_grad=True)
    nodes = {
        "LseAggregateNll": ops.lse_aggregate_nll(x, torch.tensor([0, 1, 1]), backend="cpu").grad_fn,
        "LseAggregate": ops.lse_aggregate(x, backend="cpu").grad_fn,
        "TemporalMean": ops.temporal_mean(frames, backend="cpu").grad_fn,
    }
    for name, node in nodes.items():
        assert node.name().startswith("torch::autograd::CppNode<") and node.name().endswith(f"::{name}>")
    for op in ("lse_aggregate", "lse_aggregate_nll", "temporal_mean"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"clipbert::{op}", "Autograd")


def test_set_backend_round_trip(restore_backend):
    for name in ops.BACKENDS:
        ops.set_backend(name)
        assert ops.get_backend() == name
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.set_backend("tpu")


def test_process_wide_backend_is_used(restore_backend, monkeypatch):
    calls = []
    real = ops.lse.lse_aggregate_reference
    monkeypatch.setattr(ops.lse, "lse_aggregate_reference", lambda x: calls.append(1) or real(x))
    ops.set_backend("reference")
    ops.lse_aggregate(torch.randn(2, 3, 4))
    assert calls == [1]


def test_auto_picks_cpu_kernel():
    assert _backend.resolve("auto", torch.device("cpu")) == "cpu"


def test_auto_falls_back_to_reference_with_one_warning(monkeypatch):
    monkeypatch.setitem(_backend._native, "cpu", "ImportError: not built")
    monkeypatch.setattr(_backend, "_warned", set())
    x = torch.randn(2, 3, 4)
    with pytest.warns(RuntimeWarning, match="PyTorch reference"):
        out = ops.lse_aggregate(x, backend="auto")
    torch.testing.assert_close(out, ops.lse_aggregate_reference(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.lse_aggregate(x, backend="auto")  # warned once only


def test_a_failed_kernel_import_is_reported_with_its_error_and_the_rebuild(monkeypatch):
    # A stale build (linked against another torch) fails with an undefined symbol: that text says why.
    def broken_import(name):
        raise ImportError(f"{name}.so: undefined symbol: _ZN3c10")

    monkeypatch.setattr(_backend, "importlib", types.SimpleNamespace(import_module=broken_import))
    monkeypatch.delitem(_backend._native, "cpu")
    monkeypatch.setattr(_backend, "_warned", set())
    with pytest.warns(RuntimeWarning, match=r"clipbert\._C\.so: undefined symbol: _ZN3c10; .*`make setup`"):
        assert _backend.resolve("auto", torch.device("cpu")) == "reference"
    with pytest.raises(RuntimeError, match=r"not available: ImportError: .*undefined symbol.*`make setup`"):
        _backend.resolve("cpu", torch.device("cpu"))


def test_unavailable_backend_raises(monkeypatch):
    x = torch.randn(2, 3, 4)
    with pytest.raises(RuntimeError, match="backend 'cuda' needs cuda tensors"):
        ops.lse_aggregate(x, backend="cuda")
    monkeypatch.setitem(_backend._native, "cpu", "ImportError: not built")
    with pytest.raises(RuntimeError, match="backend 'cpu' is not available: ImportError"):
        ops.temporal_mean(x, backend="cpu")
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        ops.lse_aggregate(x, backend="triton")
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.lse_aggregate(x, backend="gpu")


@pytest.mark.parametrize("backend", ["cpu", "reference", TRITON])
def test_bad_inputs_raise_naming_the_argument(backend):
    if backend == "cpu" and not ops.native_available("cpu"):
        pytest.skip("clipbert._C not built")
    x = torch.randn(2, 3, 4)
    t = torch.tensor([0, 3])
    with pytest.raises(ValueError, match=r"logits must be \[B, N, K\].*\[2, 12\]"):
        ops.lse_aggregate(x.flatten(1), backend=backend)
    with pytest.raises(ValueError, match=r"logits must be \[B, N, K\] with N, K > 0"):
        ops.lse_aggregate(torch.randn(2, 0, 4), backend=backend)
    with pytest.raises(ValueError, match="logits must be float32/float16/bfloat16/float64, got torch.int64"):
        ops.lse_aggregate_nll(x.long(), t, backend=backend)
    with pytest.raises(ValueError, match=r"target must be \[B\] = \[2\], got \[2, 1\]"):
        ops.lse_aggregate_nll(x, t[:, None], backend=backend)
    with pytest.raises(ValueError, match="target must be an int64"):
        ops.lse_aggregate_nll(x, t.int(), backend=backend)
    # Python backends raise ValueError, the C++ kernel RuntimeError; both name the bad entry.
    with pytest.raises((ValueError, RuntimeError), match=r"target\[1\] = 4 is outside \[0, K\) = \[0, 4\)"):
        ops.lse_aggregate_nll(x, torch.tensor([0, 4]), backend=backend)
    with pytest.raises(ValueError, match="reduction must be one of"):
        ops.lse_aggregate_nll(x, t, "avg", backend=backend)
    with pytest.raises(ValueError, match="mode must be one of"):
        ops.clip_aggregate(x, "median", backend=backend)
    with pytest.raises(ValueError, match=r"x must be \[B, T, ...\] with T > 0, got \[5\]"):
        ops.temporal_mean(torch.randn(5), backend=backend)
    with pytest.raises(ValueError, match="x must be float32/float16/bfloat16/float64"):
        ops.temporal_mean(torch.ones(2, 3, dtype=torch.int32), backend=backend)


def test_raw_kernels_check_their_inputs():
    c = torch.ops.clipbert
    x = torch.randn(2, 3, 4)
    with pytest.raises(RuntimeError, match=r"lse_aggregate: logits must be \[B, N, K\], got \[2, 12\]"):
        c.lse_aggregate(x.flatten(1))
    with pytest.raises(RuntimeError, match=r"lse_aggregate_nll: target\[0\] = -1 is outside"):
        c.lse_aggregate_nll(x, torch.tensor([-1, 0]), 1)
    with pytest.raises(
        RuntimeError, match="reduction must be 0 \\(none\\), 1 \\(mean\\) or 2 \\(sum\\), got 7"
    ):
        c.lse_aggregate_nll(x, torch.tensor([1, 0]), 7)
    out, lse = c.lse_aggregate(x)
    with pytest.raises(
        RuntimeError, match=r"_lse_aggregate_backward: grad_out must have shape \[2, 4\], got \[4, 2\]"
    ):
        c._lse_aggregate_backward(out.t().contiguous(), x, out, lse)
    with pytest.raises(RuntimeError, match="lse_all must be Float, got Double"):
        c._lse_aggregate_backward(out, x, out, lse.double())
    with pytest.raises(
        RuntimeError, match="temporal_mean: x must be float32/float16/bfloat16/float64, got Int"
    ):
        c.temporal_mean(torch.ones(2, 3, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="_temporal_mean_backward: T must be > 0, got 0"):
        c._temporal_mean_backward(torch.ones(2, 3), 0)


def _op_samples(ns):
    x = torch.randn(3, 4, 5, requires_grad=True)
    t = torch.tensor([0, 4, 2])
    ops_ns = getattr(torch.ops, ns)
    out, lse = ops_ns.lse_aggregate(x.detach())
    _, stats = ops_ns.lse_aggregate_nll(x.detach(), t, 1)
    v = torch.randn(2, 3, 4, 5, requires_grad=True)
    return [
        ("lse_aggregate", (x,)),
        ("lse_aggregate", (x.detach().transpose(1, 2).requires_grad_(),)),
        ("_lse_aggregate_backward", (torch.randn(3, 5), x.detach(), out, lse)),
        ("lse_aggregate_nll", (x, t, 0)),
        ("lse_aggregate_nll", (x, t, 1)),
        ("_lse_aggregate_nll_backward", (torch.tensor(0.7), x.detach(), t, stats, 1)),
        ("temporal_mean", (v,)),
        ("temporal_mean", (v.detach()[:, ::2].requires_grad_(),)),
        ("_temporal_mean_backward", (torch.randn(2, 4, 5), 3)),
    ]


@pytest.mark.parametrize("ns", ["clipbert", pytest.param("clipbert_triton", marks=needs_triton)])
def test_opcheck_every_op(ns):
    from clipbert.ops import _triton_ops  # noqa: F401  (registers clipbert_triton)

    covered = set()
    for name, args in _op_samples(ns):
        torch.library.opcheck(getattr(getattr(torch.ops, ns), name), args)
        covered.add(name)
    assert covered == {
        "lse_aggregate",
        "_lse_aggregate_backward",
        "lse_aggregate_nll",
        "_lse_aggregate_nll_backward",
        "temporal_mean",
        "_temporal_mean_backward",
    }


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def step(frames, logits, target):
        pooled = ops.temporal_mean(frames, backend="cpu")  # [B, F]
        scores = logits + pooled.mean(-1)[:, None, None]  # [B, N, K]
        return ops.lse_aggregate_nll(scores, target, backend="cpu") + ops.lse_aggregate(scores).sum()

    frames = torch.randn(3, 2, 6, requires_grad=True)
    logits = torch.randn(3, 4, 5, requires_grad=True)
    target = torch.tensor([1, 0, 4])
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(frames, logits, target)
    torch.testing.assert_close(loss, step(frames, logits, target))
    grads = torch.autograd.grad(loss, (frames, logits))
    grads_eager = torch.autograd.grad(step(frames, logits, target), (frames, logits))
    for g, ge in zip(grads, grads_eager):
        torch.testing.assert_close(g, ge)


def test_native_ready_agrees_with_resolve(restore_backend):
    # The one-launch ops skip `resolve` when `native_ready` says the compiled kernel runs; it must never say
    # so where `resolve` would pick something else (or raise).
    if not ops.native_available("cpu"):
        pytest.skip("clipbert._C not built")
    x = torch.randn(2, 3, 4)
    for process_wide in ("auto", "cpu", "reference", "triton"):
        ops.set_backend(process_wide)
        for backend in (None, "auto", "cpu", "cuda", "reference", "triton"):
            ready = _backend.native_ready(x, backend)
            try:
                picked = _backend.resolve(backend, x.device)
            except RuntimeError:
                picked = None
            assert ready == (picked == "cpu"), (process_wide, backend, ready, picked)
