"""The Figure-5 harness without the model: batch search, memory accounting, timing, FLOPs, MFU, outputs."""

import sys
import time
from pathlib import Path

import pytest
import torch

from clipbert.perf.devices import card_slug, mfu, peak_for_name
from clipbert.perf.flops_count import StepFlops, counted_forward_flops
from clipbert.perf.memory import (
    LiveTensorBytes,
    PeakMemoryMeter,
    collect_only_new_objects,
    is_oom,
    release_memory,
)
from clipbert.perf.search import Probe, find_max_batch
from clipbert.perf.timing import time_steps

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _affine_probe(base: int, per_sample: int, cap: int, calls: list):
    def probe(b: int) -> Probe:
        calls.append(b)
        peak = base + per_sample * b
        return Probe(b, peak <= cap, peak, 0.0)

    return probe


@pytest.mark.parametrize(
    "base,per_sample,cap",
    [(100, 7, 1000), (5_000, 1, 6_001), (10, 1000, 999_999), (0, 3, 2), (1 << 30, 12345, 2 << 30)],
)
def test_search_finds_exact_answer_of_affine_memory(base, per_sample, cap):
    calls = []
    res = find_max_batch(_affine_probe(base, per_sample, cap, calls), cap, limit=100_000)
    truth = max(0, (cap - base) // per_sample)
    assert res.max_batch == truth
    assert res.exact
    assert len(calls) <= 8  # the line makes it a handful of probes, not a bisection from 1..limit
    if truth:
        assert res.bytes_per_sample == pytest.approx(per_sample)


def test_search_exact_on_convex_memory_and_counts_only_real_probes():
    # Peak grows faster than linearly: the line overshoots, bisection must still land exactly.
    cap = 50_000

    def probe(b):
        peak = 1000 + 10 * b + b * b // 3
        return Probe(b, peak <= cap, peak, 0.0)

    res = find_max_batch(probe, cap, limit=10_000, max_probes=30)
    truth = max(b for b in range(1, 10_000) if 1000 + 10 * b + b * b // 3 <= cap)
    assert (res.max_batch, res.first_failure, res.exact) == (truth, truth + 1, True)
    assert all(p.fits == (p.batch <= truth) for p in res.probes)


def test_search_oom_probes_without_peak_and_limits():
    # CUDA-style: a failing probe has no peak (the step raised out-of-memory).
    def probe(b):
        fits = b <= 37
        return Probe(b, fits, 1000 + 50 * b if fits else None, 0.0, None if fits else "OutOfMemoryError")

    assert find_max_batch(probe, 1000 + 50 * 37, limit=1000).max_batch == 37
    top = find_max_batch(probe, 10**9, limit=20)
    assert (top.max_batch, top.first_failure, top.exact) == (20, None, True)
    none = find_max_batch(lambda b: Probe(b, False, None, 0.0), 10, limit=50)
    assert (none.max_batch, none.first_failure, none.exact) == (0, 1, True)
    with pytest.raises(ValueError, match="start"):
        find_max_batch(probe, 10, start=0)


def test_search_recovers_when_small_batches_underestimate_the_slope():
    # As on the H100 (eager, Ntrain=8): batches 1 and 2 predicted 54, the first guess (55) ran out of
    # memory with no peak to learn from, and the time budget ended with max_batch=2. The search now aims
    # under a far prediction, so its next probe fits near the cap and corrects the line.
    cap = 32 * 2**30

    def peak(b):
        return int(2.2e9 + 595e6 * b + 1e6 * b * b)

    truth = max(b for b in range(1, 200) if peak(b) <= cap)
    res = find_max_batch(lambda b: Probe(b, peak(b) <= cap, peak(b) if peak(b) <= cap else None, 0.0), cap)
    assert (res.max_batch, res.exact) == (truth, True)
    assert res.probes[2].fits  # the first grow probe
    assert len(res.probes) <= 7


def test_search_budget_gives_a_lower_bound():
    calls = []
    res = find_max_batch(_affine_probe(0, 1, 10**6, calls), 10**6, limit=10**7, max_probes=3)
    assert len(calls) == 3 and not res.exact
    assert 0 < res.max_batch <= 10**6
    past = find_max_batch(_affine_probe(0, 1, 10**6, []), 10**6, deadline=time.monotonic() - 1)
    assert not past.exact and len(past.probes) == 2  # start and 2*start always run


def test_search_probes_the_targets_first_even_when_cut_short():
    # The third H100 session: at Ntrain=16 the search went 1, 2, 37, then 302 (out of memory) and its
    # budget ended, so the target 48 was never probed. Targets now run right after the first two probes.
    calls = []
    res = find_max_batch(_affine_probe(0, 1, 100, calls), 100, max_probes=4, must_try=(48, 380, 1))
    assert calls == [1, 2, 48, 380]  # 380 runs out of memory, then the probe budget ends
    assert res.max_batch == 48 and res.first_failure == 380 and not res.exact
    calls = []
    find_max_batch(_affine_probe(0, 1, 100, calls), 100, max_probes=14, must_try=(380, 48))
    assert calls[:4] == [1, 2, 48, 380]  # ascending, both inside the bracket when tried
    calls = []
    res = find_max_batch(_affine_probe(0, 1, 100, calls), 100, limit=64, must_try=(380,))
    assert 380 not in calls and res.max_batch == 64  # beyond the limit: not probed
    none = find_max_batch(lambda b: Probe(b, False, None, 0.0), 10, must_try=(5,))
    assert [p.batch for p in none.probes] == [1]  # nothing fits: nothing more to try


def test_live_tensor_bytes_counts_storages_once_and_frees():
    with PeakMemoryMeter("cpu") as meter:
        x = torch.empty(1000, dtype=torch.float32)  # 4000 B
        y = x * 2  # 8000 live
        v = y.view(10, 100).t()  # a view: no new storage
        v.mul_(3)  # in place: no new storage
        del x  # 4000 live
        z = torch.empty(250, dtype=torch.float64)  # 6000 live
        del y, v, z
        w = torch.empty(3000, dtype=torch.uint8)  # 3000 live, peak stays 8000
        del w
    assert meter.peak_bytes == 8000


def test_live_tensor_bytes_sees_backward_and_resident():
    lin = torch.nn.Linear(64, 32, bias=False)
    x = torch.randn(16, 64)
    with LiveTensorBytes(resident=[lin.weight]) as mode:
        assert mode.live == 64 * 32 * 4
        lin(x).square().sum().backward()
    # weight + its gradient, at least; the saved output [16, 32] and square live during backward
    assert mode.peak >= 2 * 64 * 32 * 4 + 16 * 32 * 4
    assert mode.peak < 2 * 64 * 32 * 4 + 16 * 64 * 4 * 4


def test_probes_collect_their_own_cycles_but_not_the_imported_objects():
    import gc
    import weakref

    before = torch.zeros(4)
    cycle = [before]
    cycle.append(cycle)  # garbage made before: freed on entry, not frozen for the run
    before_ref, cycle = weakref.ref(before), None
    del before
    with collect_only_new_objects():
        assert before_ref() is None
        assert gc.get_freeze_count() > 1000  # torch's modules and the rest: skipped by each collection
        probe = torch.zeros(4)
        cycle = [probe]
        cycle.append(cycle)  # what an out-of-memory traceback's frames do
        probe_ref, cycle = weakref.ref(probe), None
        del probe
        release_memory(torch.device("cpu"))
        assert probe_ref() is None
    assert gc.get_freeze_count() == 0


def test_is_oom():
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(RuntimeError("CUDA error: out of memory"))
    assert not is_oom(RuntimeError("shape mismatch"))


def test_time_steps_median_and_budget():
    calls = []

    def step():
        calls.append(1)
        time.sleep(0.01)

    res = time_steps(step, torch.device("cpu"), warmup=2, steps=5)
    assert len(calls) == 7 and res.steps == 5
    assert 0.009 < res.median_s < 0.05 and res.p10_s <= res.median_s <= res.p90_s
    short = time_steps(lambda: time.sleep(0.02), torch.device("cpu"), warmup=0, steps=100, max_seconds=0.05)
    assert 3 <= short.steps < 100
    with pytest.raises(ValueError, match="steps"):
        time_steps(step, torch.device("cpu"), steps=0)


@pytest.mark.parametrize(
    "name,tflops",
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.4),
        ("Tesla V100-SXM2-32GB", 125.0),
        # whole words: as substrings these read as the L4 (121) and the H200 SXM (989.4)
        ("NVIDIA L40", 181.0),
        ("NVIDIA H200 NVL", 835.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
    ],
)
def test_peak_table(name, tflops):
    peak = peak_for_name(name)
    assert peak.bf16_flops == pytest.approx(tflops * 1e12) and peak.source == "table"


@pytest.mark.parametrize(
    "name, slug",
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H100 PCIe", "h100pcie"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA GH200 480GB", "gh200"),  # its results must not land under the H200's names
        ("NVIDIA RTX 6000 Ada Generation", "rtx"),
        ("cpu", "cpu"),
    ],
)
def test_card_slug_names_result_files(name, slug):
    assert card_slug(name) == slug


def test_mfu_arithmetic_and_unknown_device():
    h100 = peak_for_name("NVIDIA H100 80GB HBM3")
    assert mfu(989.4e12 * 0.5, 1.0, h100) == pytest.approx(0.5)
    assert mfu(1e12, 1.0, peak_for_name("cpu")) is None
    assert mfu(2e12, 1.0, peak_for_name("cpu", override_tflops=4.0)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="seconds"):
        mfu(1.0, 0.0, h100)


def test_flops_split_frozen_and_step_convention():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.ReLU(), torch.nn.Linear(40, 8))
    model[0].requires_grad_(False)
    x = torch.randn(5, 24)
    total, frozen = counted_forward_flops(model, lambda: model(x))
    assert frozen == 2 * 5 * 24 * 40
    assert total == frozen + 2 * 5 * 40 * 8
    flops = StepFlops(total, frozen, "FlopCounterMode", total)
    assert flops.step == 3 * (total - frozen) + frozen


def _fake_result(tmp_path):
    rows = []
    for path, ms, batch in (("eager", 200.0, 16), ("optimized", 60.0, 50)):
        for n in (2, 16):
            rows.append(
                dict(
                    panel="b",
                    path=path,
                    n_train=n,
                    frames_per_clip=1,
                    batch=8,
                    median_ms=ms * n / 16,
                    frames_per_s=8 * n / (ms * n / 16e3),
                    mfu=0.1 if path == "eager" else 0.4,
                    peak_gib=10.0,
                    error=None,
                )
            )
            rows.append(
                dict(
                    panel="a",
                    path=path,
                    n_train=n,
                    frames_per_clip=1,
                    batch=batch * 16 // n,
                    max_batch_exact=True,
                    bytes_per_sample_gib=0.5,
                    error=None,
                )
            )
    cfg = dict(
        backbone_style="msra",
        backbone_layers=[3, 4, 6, 3],
        freeze_at=2,
        num_layers=12,
        hidden_size=768,
        image_size=448,
        max_text_len=32,
    )
    return dict(
        device="NVIDIA H200",
        date_utc="2026-11-26T00:00:00",
        mem_cap_gib=32,
        memory_accounting="cuda",
        torch="2.11",
        wall_s=1.0,
        config=cfg,
        rows=rows,
        time_batch=8,
        peak_bf16_tflops=989.4,
        profile=None,
    )


def test_summary_and_plot_files(tmp_path):
    from fig5_plot import plot_figure5
    from fig5_summary import write_summary

    result = _fake_result(tmp_path)
    md = tmp_path / "s.md"
    write_summary(result, str(md))
    text = md.read_text()
    # 200 ms / 60 ms at Ntrain=16; each verdict is checked whole ("met" is also inside "NOT met")
    assert "speed at Ntrain=16, T=1, batch 8: 3.33x eager (target >= 3x): met" in text
    assert "optimized MFU at Ntrain=16: 40.0% of bf16 peak 989.4 TFLOP/s (target >= 35%): met" in text
    assert "max batch at Ntrain=16: 50 (paper V100: 16; target >= 48): met" in text
    assert "max batch at Ntrain=2: 400 (paper V100: 190; target >= 380): met" in text
    assert "NOT met" not in text
    # the same run with the optimized path at 2x, 30% MFU and batch 40: every target line says NOT met
    for r in result["rows"]:
        if r["path"] == "optimized" and r["panel"] == "b":
            r.update(median_ms=r["median_ms"] * 100 / 60, frames_per_s=r["frames_per_s"] * 60 / 100, mfu=0.3)
        elif r["path"] == "optimized" and r["panel"] == "a":
            r["batch"] = 40 * 16 // r["n_train"]
    write_summary(result, str(md))
    text = md.read_text()
    assert "batch 8: 2.00x eager (target >= 3x): NOT met" in text
    assert "(target >= 35%): NOT met" in text
    assert "max batch at Ntrain=16: 40 (paper V100: 16; target >= 48): NOT met" in text
    assert "max batch at Ntrain=2: 320 (paper V100: 190; target >= 380): NOT met" in text
    png = tmp_path / "f.png"
    plot_figure5(result["rows"], "test", str(png), 32)
    assert png.stat().st_size > 10_000


def test_memory_cap_passes_an_index_for_a_bare_cuda_device(monkeypatch):
    # On the H100 torch.device("cuda") (no index) made set_per_process_memory_fraction raise ValueError.
    from clipbert.perf.memory import apply_memory_cap

    calls = []
    props = type("Props", (), {"total_memory": 80 * 2**30})()
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d: calls.append((f, d)))
    assert apply_memory_cap(32 * 2**30, torch.device("cuda")) == pytest.approx(0.4)
    assert apply_memory_cap(8 * 2**30, torch.device("cuda", 3)) == pytest.approx(0.1)
    assert calls == [(pytest.approx(0.4), 0), (pytest.approx(0.1), 3)]
    assert all(isinstance(d, int) for _, d in calls)
    with pytest.raises(ValueError, match="exceeds"):
        apply_memory_cap(81 * 2**30, torch.device("cuda"))
    assert apply_memory_cap(2**30, torch.device("cpu")) is None


def test_summary_does_not_judge_a_cut_search_below_its_range(tmp_path):
    from fig5_summary import write_summary

    result = _fake_result(tmp_path)
    for row in result["rows"]:
        if row["panel"] == "a" and row["path"] == "optimized":
            # Ntrain=16: cut at 2 with no failure seen (unknown); Ntrain=2: cut, but it failed at 300 (< 380)
            row.update(batch=2, max_batch_exact=False, first_failure=None if row["n_train"] == 16 else 300)
    md = tmp_path / "s.md"
    write_summary(result, str(md))
    text = md.read_text()
    assert "max batch at Ntrain=16: >=2 (search cut)" in text
    assert "target >= 48): not established (search cut)" in text
    assert "max batch at Ntrain=2: 2..299 (search cut)" in text and "target >= 380): NOT met" in text


def test_summary_ratios_only_of_exact_searches_and_of_each_runs_own_eager(tmp_path):
    from fig5_summary import write_summary

    result = _fake_result(tmp_path)
    for row in result["rows"]:
        if row["panel"] == "a" and row["path"] == "eager" and row["n_train"] == 2:
            row.update(max_batch_exact=False, first_failure=None)  # a lower bound: no ratio (was 0.01 etc.)
    ablation = dict(panel="ablation", n_train=16, frames_per_clip=1, batch=8, mfu=None, peak_gib=1.0)
    result["rows"] += [
        dict(ablation, path="eager", median_ms=100.0, frames_per_s=80.0, eager_frames_per_s=80.0),
        # merged from another run, whose eager row (100 frames/s) was replaced by this file's
        dict(ablation, path="+channels_last", median_ms=70.0, frames_per_s=125.0, eager_frames_per_s=100.0),
    ]
    result["profile"] = dict(
        options={"name": "eager"}, n_clips=16, batch=8, parts_ms={"full_step": 10.0, "cnn": 5.0}
    )
    md = tmp_path / "s.md"
    write_summary(result, str(md))
    text = md.read_text()
    assert "| 2 | >=128 (search cut) | 400 | - |" in text and "| 16 | 16 | 50 | 3.12 |" in text
    assert "| +channels_last | 70.0 | 125 | 1.25x |" in text  # not 125 / 80 = 1.56x
    assert "Where the time goes (eager path" in text


def test_plot_labels_the_timed_batch_it_was_given(tmp_path, monkeypatch):
    import fig5_plot

    labels = []
    monkeypatch.setattr(fig5_plot.plt.Axes, "set_xlabel", lambda ax, text, *a, **k: labels.append(text))
    rows = [r | {"batch": 2} if r["panel"] == "b" else r for r in _fake_result(tmp_path)["rows"]]
    fig5_plot.plot_figure5(rows, "t", str(tmp_path / "f.png"), 32)
    assert "Ntrain (T=1, batch 2)" in labels and "Ntrain (T=1, batch 8)" not in labels
