"""FLOPs and MFU accounting at the edges: every benchmark path of one configuration counts the same model
FLOPs, and the counts follow the trainer's convention (clipbert.models.training_flops)."""

import dataclasses

import pytest
import test_bench_paths as _bench_paths
import torch

import clipbert.models as models
from clipbert.models.flops import training_flops
from clipbert.perf import measure
from clipbert.perf.devices import peak_for_name
from clipbert.perf.flops_count import step_flops
from clipbert.perf.paths import (
    EAGER,
    OPTIMIZED_MEMORY,
    PathOptions,
    ablation_ladder,
    build_train_step,
    make_batch,
)

# the frozen-configuration tiny model and the one-thread fixture of the path tests
_one_thread = _bench_paths._one_thread
_cfg = _bench_paths._cfg


def _expected_step(cfg, n: int, t: int) -> int:
    return training_flops(cfg, n, t, cfg.max_text_len, 1)


# The ablation's rewrites of the frozen prefix keep its weights as buffers (no parameters): the frozen share
# was read off the module tree, so their forward counted 3x, and the padded stems' extra products counted too.
@pytest.mark.parametrize(
    "options",
    [
        *ablation_ladder(),
        OPTIMIZED_MEMORY,
        PathOptions("stem_pad8", stem_channels=8),
        PathOptions("fuse_frozen_fp32", stem_channels=4, stem_s2d=True, fuse_frozen=True, precision="fp32"),
    ],
    ids=lambda o: o.name,
)
def test_every_path_counts_the_same_model_flops(options):
    cfg = _cfg()
    n, t = 2, 1
    step = build_train_step(cfg, options, "cpu", optimizer=False)
    flops = step_flops(step.model, cfg, make_batch(cfg, 1, n, t, "cpu"), n, t)
    assert flops.step == _expected_step(cfg, n, t)


def test_step_flops_count_train_mode_pixel_sampling():
    # The benchmark's model runs in train mode, where 2 of the 4 visual tokens (128 px: a 2x2 grid) are kept.
    cfg = _cfg(image_size=128, pixel_random_sampling_size=2)
    n, t = 2, 1
    step = build_train_step(cfg, EAGER, "cpu", optimizer=False)
    flops = step_flops(step.model, cfg, make_batch(cfg, 1, n, t, "cpu"), n, t)
    assert flops.step == _expected_step(cfg, n, t)
    assert flops.forward == models.forward_flops(cfg, n, t, cfg.max_text_len, pixel_sampling=True)


def test_measure_time_counts_the_eager_flops_for_a_fused_path_measured_first(monkeypatch):
    # measure_time caches per configuration, so the first path measured set every path's count.
    monkeypatch.setattr(measure, "_FLOPS_CACHE", {})
    cfg = _cfg()
    options = PathOptions("fuse_frozen", stem_channels=4, stem_s2d=True, fuse_frozen=True)
    step = build_train_step(cfg, options, "cpu", optimizer=False)
    peak = peak_for_name("cpu", override_tflops=1.0)
    point = measure.measure_time(step, cfg, peak, panel="b", n_clips=2, frames=1, batch=2, warmup=0, steps=1)
    assert point.model_tflop_per_step == pytest.approx(2 * _expected_step(cfg, 2, 1) / 1e12, rel=1e-12)
    assert point.mfu == pytest.approx(point.model_tflop_per_step / (point.median_ms / 1e3), rel=1e-9)


def test_the_flops_cache_tells_configs_apart_by_value_not_by_id(monkeypatch):
    # keyed by id(cfg), a config freed and followed by another at the same address got its count
    monkeypatch.setattr(measure, "_FLOPS_CACHE", {})
    step = build_train_step(_cfg(), EAGER, "cpu", optimizer=False)
    one, two = _cfg(), _cfg(num_layers=1)
    monkeypatch.setattr(measure, "id", lambda _: 7, raising=False)  # the address reused
    first = measure._flops_per_sample(step, one, 1, 1)
    assert measure._flops_per_sample(step, two, 1, 1).forward < first.forward


def test_cpu_has_no_peak_and_no_mfu():
    cfg = _cfg()
    step = build_train_step(cfg, EAGER, "cpu", optimizer=False)
    point = measure.measure_time(
        step, cfg, peak_for_name("cpu"), panel="b", n_clips=1, frames=1, batch=1, warmup=0, steps=1
    )
    assert point.error is None and point.mfu is None and point.model_tflop_per_step > 0
    assert dataclasses.asdict(point)["frames_per_s"] > 0


# ------------------------------------------------------------------------------ eager vs optimized paths
def _grads(step) -> torch.Tensor:
    return torch.cat([p.grad.double().flatten() for p in step.model.parameters() if p.grad is not None])


@pytest.mark.parametrize("fusion", ["conv3d", "conv2plus1d"])
def test_channels_last_path_keeps_a_3d_temporal_fusion(fusion):
    # Module.to(memory_format=channels_last) also takes the temporal Conv3d's 5-D weights, and raised
    # "required rank 4 tensor to use channels_last format": the optimized path could not be built.
    cfg = _cfg(temporal_fusion=fusion)
    batch = make_batch(cfg, 1, 2, 2, "cpu", seed=4)
    eager = build_train_step(cfg, PathOptions("e", precision="fp32"), "cpu", optimizer=False)
    fast = build_train_step(
        cfg, PathOptions("cl", channels_last=True, precision="fp32"), "cpu", optimizer=False
    )
    assert fast.model.cnn.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    loss, ref = fast.forward_backward(batch), eager.forward_backward(batch)
    assert abs(loss - ref) <= 1e-5 * abs(ref)
    assert (_grads(fast) - _grads(eager)).norm() <= 1e-4 * _grads(eager).norm()


def test_fuse_frozen_runs_a_wholly_frozen_cnn():
    # freeze_at=5 leaves the fused backbone without parameters: the model's frame check took the first one
    # with next() and the step died in a bare StopIteration.
    cfg = _cfg(freeze_at=5)
    batch = make_batch(cfg, 1, 2, 1, "cpu", seed=4)
    eager = build_train_step(cfg, PathOptions("e", precision="fp32"), "cpu", optimizer=False)
    fused = build_train_step(
        cfg, PathOptions("f", fuse_frozen=True, precision="fp32"), "cpu", optimizer=False
    )
    assert not list(fused.model.cnn.backbone.parameters())
    loss, ref = fused.forward_backward(batch), eager.forward_backward(batch)
    assert abs(loss - ref) <= 1e-5 * abs(ref)
    assert (_grads(fused) - _grads(eager)).norm() <= 1e-4 * _grads(eager).norm()


# ------------------------------------------------------------------------------------------- timing
class _FakeEvent:
    """torch.cuda.Event on the host: logs records and waits, 2 ms from any start to its end."""

    log: list = []

    def __init__(self, enable_timing: bool = False):
        self.enable_timing = enable_timing

    def record(self) -> None:
        _FakeEvent.log.append(("record", self))

    def synchronize(self) -> None:
        _FakeEvent.log.append(("wait", self))

    def elapsed_time(self, end) -> float:
        return 2.0


@pytest.mark.parametrize("max_seconds,steps", [(1e9, 6), (0.0, 3)])
def test_cuda_budget_check_never_drains_the_queue(monkeypatch, max_seconds, steps):
    # The budget check waited for the step just launched, so every later step started on an idle GPU and
    # its time included the host's launch latency (only with a budget: panels b and d, not the ablation).
    from clipbert.perf import timing

    monkeypatch.setattr(_FakeEvent, "log", [])
    monkeypatch.setattr(timing.torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(timing.torch.cuda, "synchronize", lambda device=None: None)
    res = timing.time_steps(lambda: None, torch.device("cuda"), warmup=0, steps=6, max_seconds=max_seconds)
    assert res.steps == steps and res.median_s == pytest.approx(2e-3)
    recorded = []
    for kind, event in _FakeEvent.log:
        if kind == "record":
            recorded.append(event)
        else:  # a wait leaves work queued behind the event it waits for
            assert event is not recorded[-1]
    assert any(kind == "wait" for kind, _ in _FakeEvent.log)
