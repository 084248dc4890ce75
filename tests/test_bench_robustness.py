"""The benchmarks under failure: a run killed mid-write, points that fail or cannot be measured, results of
older runs and of other benchmarks given to --merge, and kernel backends that are missing or fail."""

import json
import math
import os
import sys
import types
from pathlib import Path

import pytest
import torch

from clipbert.perf import measure
from clipbert.perf.devices import device_peak
from clipbert.perf.search import Probe
from clipbert.perf.timing import TimingResult

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU is shared
    yield
    torch.set_num_threads(previous)


def _fake_step():
    """What measure_max_batch / measure_time use of a TrainStep, without a model."""
    options = types.SimpleNamespace(name="eager", to_dict=lambda: {"name": "eager"})
    zero = types.SimpleNamespace(zero_grad=lambda set_to_none=True: None)
    return types.SimpleNamespace(
        options=options,
        notes=[],
        device=torch.device("cpu"),
        optimizer=zero,
        model=zero,
        resident_tensors=lambda: [],
        forward_backward=lambda batch: None,
    )


def _search(monkeypatch, probe, limit=64, cap=1000):
    monkeypatch.setattr(measure, "_probe_fn", lambda *a: probe)
    cfg = types.SimpleNamespace()
    return measure.measure_max_batch(
        _fake_step(), cfg, panel="a", n_clips=2, frames=1, cap_bytes=cap, limit=limit, deadline=None
    )


def _result(rows, **header):
    cfg = dict(backbone_style="msra", backbone_layers=[3, 4, 6, 3], freeze_at=2, num_layers=12)
    cfg |= dict(hidden_size=768, image_size=448, max_text_len=32)
    base = dict(device="H200", date_utc="2026-11-29T00:00:00+00:00", mem_cap_gib=32, config=cfg, rows=rows)
    base |= dict(memory_accounting="cuda", torch="2.11", wall_s=1.0, time_batch=8, peak_bf16_tflops=989.4)
    return base | header


def _summary(tmp_path, result) -> str:
    from fig5_summary import write_summary

    write_summary(result, str(tmp_path / "s.md"))
    return (tmp_path / "s.md").read_text()


def test_a_search_that_reaches_the_batch_limit_reports_a_lower_bound(monkeypatch, tmp_path):
    # Every batch up to --max-batch-limit fits: the row said "max batch 64", exact, and the summary took a
    # ratio of it and judged a target of 380 "NOT met", when the search only knows the answer is >= 64.
    point = _search(monkeypatch, lambda b: Probe(b, True, 10 * b, 0.0), limit=64)
    assert (point.batch, point.first_failure, point.max_batch_exact) == (64, None, False)
    assert point.max_batch_limit_reached and "at least 64" in point.notes[-1]
    eager = dict(panel="a", path="eager", n_train=2, frames_per_clip=1, batch=10, max_batch_exact=True)
    text = _summary(tmp_path, _result([eager, point.to_dict() | {"path": "optimized"}]))
    assert "| 2 | 10 | >=64 (--max-batch-limit) | - |" in text  # no ratio of a bound
    assert "max batch at Ntrain=2: >=64 (--max-batch-limit)" in text
    assert "target >= 380): not established (raise --max-batch-limit)" in text and "NOT met" not in text


def test_a_cap_below_the_weights_says_batch_1_does_not_fit(monkeypatch, tmp_path):
    point = _search(monkeypatch, lambda b: Probe(b, False, 3 * 2**30, 0.0), cap=2**30)
    assert (point.batch, point.first_failure, point.error) == (0, 1, None)
    assert point.notes[-1] == "batch 1 does not fit the 1 GiB cap: its step peaked at 3.000 GiB"
    assert "| 2 | 0 (batch 1 over the cap) | - |" in _summary(tmp_path, _result([point.to_dict()]))


def test_a_probe_that_raises_keeps_the_batches_that_fit(monkeypatch):
    # A compile error at one batch size lost the probes before it (minutes of GPU time each): the row
    # said batch 0 and named neither the batch nor what had fit.
    def probe(b):
        if b > 2:
            raise RuntimeError("Triton compile failed")
        return Probe(b, True, 10 * b, 0.0)

    point = _search(monkeypatch, probe)
    assert point.error == "RuntimeError: Triton compile failed (probing batch 64; largest that fit: 2)"
    assert (point.batch, point.max_batch_exact) == (2, False)
    assert [(p["batch"], p["fits"]) for p in point.probes] == [(1, True), (2, True), (64, False)]
    assert point.probes[-1]["error"] == "RuntimeError: Triton compile failed"


def _time_point(monkeypatch, median_s, flops=None):
    monkeypatch.setattr(measure, "make_batch", lambda *a, **k: types.SimpleNamespace(num_frames=8))
    timing = TimingResult(median_s, median_s, median_s, 3, 1, [median_s] * 3)
    monkeypatch.setattr(measure, "time_steps", lambda *a, **k: timing)
    if flops is not None:
        monkeypatch.setattr(measure, "_flops_per_sample", flops)
    cfg = types.SimpleNamespace()
    return measure.measure_time(
        _fake_step(), cfg, device_peak("cpu", 1.0), panel="b", n_clips=1, frames=1, batch=8, warmup=1, steps=3
    )


@pytest.mark.parametrize("median_s", [math.nan, math.inf, 0.0])
def test_a_timing_that_is_not_a_positive_time_is_an_error_row(monkeypatch, median_s):
    # nan went into the JSON as NaN (not JSON) with frames/s and MFU nan; 0 was "ZeroDivisionError".
    point = _time_point(monkeypatch, median_s)
    assert point.error == f"RuntimeError: step timing gave a median of {median_s} s (3 steps)"
    assert point.median_ms is None and point.frames_per_s is None
    json.dumps(point.to_dict(), allow_nan=False)


def test_a_failing_flop_count_keeps_the_measured_time(monkeypatch):
    def broken(*a):
        raise RuntimeError("FlopCounterMode: unsupported op")

    point = _time_point(monkeypatch, 0.5, flops=broken)
    assert point.error is None and point.median_ms == 500.0 and point.frames_per_s == 16.0
    assert point.mfu is None and point.notes == [
        "FLOPs not counted, no MFU: RuntimeError: FlopCounterMode: unsupported op"
    ]


def test_a_run_killed_while_writing_keeps_the_points_before(tmp_path, monkeypatch):
    # The GPU step's `timeout` sends SIGTERM, then SIGKILL: a kill while <tag>.partial.json was rewritten
    # left it truncated, and every point measured before was lost with it.
    import memory_vs_ntrain

    real_write = Path.write_text
    partial_writes = []

    def killed_on_second_partial(self, text, *a, **k):
        if '"complete": false' in text:
            partial_writes.append(self.name)
            if len(partial_writes) == 2:
                real_write(self, text[: len(text) // 2])
                raise KeyboardInterrupt
        return real_write(self, text, *a, **k)

    monkeypatch.setattr(Path, "write_text", killed_on_second_partial)
    argv = "--device cpu --small --no-compile --paths eager --panels d --frames 1 2 --steps 1 --warmup 1"
    argv = argv.split() + ["--time-batch", "1", "--threads", "1", "--no-plot", "--out-dir", str(tmp_path)]
    with pytest.raises(KeyboardInterrupt):
        memory_vs_ntrain.main(argv + ["--tag", "k"])
    partial = json.loads((tmp_path / "k.partial.json").read_text())
    assert [(r["panel"], r["frames_per_clip"]) for r in partial["rows"]] == [("d", 1)]
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary file left


class _NotHandled(Exception):
    """What SIGTERM raises here when the benchmark installs no handler (its default would end pytest)."""


def _not_handled(signum, frame):
    raise _NotHandled


def test_sigterm_writes_the_table_of_the_points_measured_so_far(tmp_path, monkeypatch):
    # run_all.sh stops a step with `timeout -k 10`: SIGTERM, then SIGKILL. Only <tag>.partial.json was
    # left, and its table and figure needed a --merge by hand; now SIGTERM stops the run where it is and
    # writes <tag>.partial.{csv,md} (and .png) from the points measured, and the exit status says so.
    import signal

    import memory_vs_ntrain

    previous = signal.signal(signal.SIGTERM, _not_handled)
    real_measure = memory_vs_ntrain.measure_time

    def terminated_on_second_point(step, cfg, peak, **kw):
        if kw["frames"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_measure(step, cfg, peak, **kw)

    monkeypatch.setattr(memory_vs_ntrain, "measure_time", terminated_on_second_point)
    argv = "--device cpu --small --no-compile --paths eager --panels d --frames 1 2 --steps 1 --warmup 1"
    argv = argv.split() + ["--time-batch", "1", "--threads", "1", "--no-plot", "--out-dir", str(tmp_path)]
    try:
        assert memory_vs_ntrain.main(argv + ["--tag", "t"]) == 128 + signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is _not_handled  # restored
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.partial.csv", "t.partial.json", "t.partial.md"]
    partial = json.loads((tmp_path / "t.partial.json").read_text())
    assert partial["complete"] is False and partial["stopped"] == "Terminated: signal SIGTERM"
    assert [(r["panel"], r["frames_per_clip"]) for r in partial["rows"]] == [("d", 1)]
    text = (tmp_path / "t.partial.md").read_text()
    assert (
        "**Stopped before the end (Terminated: signal SIGTERM): only the points measured before it.**" in text
    )
    assert "(d) forward+backward time vs T" in text
    assert len((tmp_path / "t.partial.csv").read_text().splitlines()) == 2
    # joined by --merge, it is a finished result; a complete run under the tag removes the stopped files
    merge = ["--device", "cpu", "--no-plot", "--out-dir", str(tmp_path), "--tag", "j", "--merge"]
    assert memory_vs_ntrain.main(merge + [str(tmp_path / "t.partial.json")]) == 0
    joined = json.loads((tmp_path / "j.json").read_text())
    assert "stopped" not in joined and "complete" not in joined
    assert "Stopped" not in (tmp_path / "j.md").read_text()
    monkeypatch.setattr(memory_vs_ntrain, "measure_time", real_measure)
    assert memory_vs_ntrain.main(argv + ["--tag", "t"]) == 0
    left = [p.name for p in tmp_path.glob("t.partial.*")]  # only the stopped run's points, kept aside
    assert len(left) == 1 and left[0].startswith("t.partial.2") and left[0].endswith(".json")


def _merge(tmp_path, *results, tag="m"):
    import memory_vs_ntrain

    paths = []
    for i, result in enumerate(results):
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(result if isinstance(result, str) else json.dumps(result))
    argv = ["--device", "cpu", "--no-plot", "--out-dir", str(tmp_path), "--tag", tag, "--merge"]
    return memory_vs_ntrain.main(argv + [str(p) for p in paths])


def _row(**kw):
    return dict(panel="b", path="eager", n_train=1, frames_per_clip=1, batch=8, error=None) | kw


def test_merge_names_the_file_and_key_of_what_is_not_a_figure5_result(tmp_path):
    good = _result([_row(median_ms=10.0, frames_per_s=800.0)])
    for bad, message in [
        ([], r"r1.json is not a Figure-5 result \(a JSON list\)"),  # was AttributeError: 'list' ... 'get'
        ({"results": []}, r"r1.json is not a Figure-5 result \(no list of 'rows'\)"),  # an ops_*.json
        (_result([{"panel": "b", "path": "eager"}]), r"r1.json: row 0 has no 'n_train', 'frames_per_clip'"),
    ]:
        with pytest.raises(SystemExit, match=message):
            _merge(tmp_path, good, bad)
    with pytest.raises(SystemExit, match=r"no measured rows in .*r0.json"):
        _merge(tmp_path, _result([]))


def test_merge_summarizes_an_older_result_without_the_newer_header_keys(tmp_path):
    old = _result([_row(median_ms=10.0, frames_per_s=800.0)])
    for key in ("memory_accounting", "torch", "wall_s", "time_batch", "peak_bf16_tflops"):
        del old[key]
    del old["config"]["backbone_style"]
    assert _merge(tmp_path, old) == 0  # was KeyError: 'memory_accounting', naming no file
    text = (tmp_path / "m.md").read_text()
    assert "Model: ? ResNet (3, 4, 6, 3)" in text and "(accounting not recorded). torch ?." in text


def test_merge_keeps_a_measured_point_over_a_later_failure_of_it(tmp_path):
    measured = _result([_row(median_ms=10.0, frames_per_s=800.0), _row(n_train=2, median_ms=20.0)])
    failed = _result([_row(error="OutOfMemoryError: CUDA out of memory"), _row(n_train=2, median_ms=19.0)])
    assert _merge(tmp_path, measured, failed) == 0
    rows = {r["n_train"]: r for r in json.loads((tmp_path / "m.json").read_text())["rows"]}
    assert rows[1]["median_ms"] == 10.0 and rows[1]["error"] is None
    assert rows[1]["notes"] == ["r1.json failed here: OutOfMemoryError: CUDA out of memory"]
    assert rows[2]["median_ms"] == 19.0  # a later measurement still replaces an earlier one


@pytest.fixture
def small_ops(monkeypatch):
    import bench_ops

    f32 = torch.float32
    shapes = {"temporal_mean": [((2, 2, 4, 3, 3), f32)], "lse": [((4, 3, 5), f32)]}
    monkeypatch.setitem(bench_ops.SHAPES, "cpu", shapes)
    monkeypatch.setattr(bench_ops, "copy_bandwidth", lambda device: 10.0)
    return bench_ops


def test_bench_ops_reports_a_missing_backend_and_fails_its_targets(small_ops, tmp_path, monkeypatch):
    # Without the C++ extension every target check vanished, so targets_met() of no checks said "met"
    # and the run exited 0; the skipped backend was only a printed line, not in the JSON.
    from clipbert.ops import _backend

    real = _backend.resolve

    def no_cpp(backend, device):
        if backend == "cpu":
            raise RuntimeError("clipbert.ops backend 'cpu' is not available: extension not built")
        return real(backend, device)

    monkeypatch.setattr(_backend, "resolve", no_cpp)
    out = tmp_path / "ops.json"
    assert small_ops.main(["--device", "cpu", "--reps", "1", "--out", str(out)]) == 1
    report = json.loads(out.read_text())
    assert report["skipped_backends"] == {
        "cpu": "clipbert.ops backend 'cpu' is not available: extension not built"
    }
    assert {r["impl"] for r in report["results"]} >= {"eager", "reference"}
    (check,) = report["targets"]
    assert check["met"] is False and check["value"] is None
    assert check["why"].startswith("backend cpu skipped: clipbert.ops backend 'cpu' is not available")
    gpu = {"device": "cuda", "results": [], "skipped_backends": {"cuda": "no CUDA extension"}}
    checks = small_ops.check_targets(gpu)
    assert len(checks) == len(small_ops.GPU_TARGETS) and not small_ops.targets_met(checks)
    assert {c["why"] for c in checks} == {"backend cuda skipped: no CUDA extension"}


def test_bench_ops_keeps_the_table_when_one_backend_fails_or_the_timer_reads_zero(
    small_ops, tmp_path, monkeypatch
):
    from clipbert import ops

    real = ops.temporal_mean

    def breaks_on_cpu(x, backend=None):
        if backend == "cpu":
            raise RuntimeError("kernel launch failed")
        return real(x, backend=backend)

    monkeypatch.setattr(ops, "temporal_mean", breaks_on_cpu)
    out = tmp_path / "ops.json"
    assert small_ops.main(["--device", "cpu", "--reps", "1", "--out", str(out)]) == 1  # was a traceback
    report = json.loads(out.read_text())
    (failed,) = [r for r in report["results"] if r.get("error")]
    assert (failed["op"], failed["impl"], failed["time_us"], failed["speedup"]) == (
        "temporal_mean",
        "cpu",
        None,
        None,
    )
    assert failed["error"] == "RuntimeError: kernel launch failed"
    check = next(c for c in report["targets"] if c["target"].startswith("temporal_mean"))
    assert check["met"] is False and check["why"] == "RuntimeError: kernel launch failed"
    assert any(
        r["op"] == "lse_aggregate_nll" and r["impl"] == "cpu" and r["speedup"] for r in report["results"]
    )
    # a timer that reads 0 (a coarse clock) gives no rate and no ratio, not a ZeroDivisionError
    monkeypatch.setattr(small_ops, "_time_once", lambda fn, device, reps: 0.0)
    assert small_ops.main(["--device", "cpu", "--reps", "1", "--out", str(out)]) == 1
    rows = json.loads(out.read_text())["results"]
    assert all(r["speedup"] is None and r["gbps"] is None for r in rows if not r.get("error"))


def test_bench_data_refuses_an_only_prefix_that_names_no_variant_before_preparing(tmp_path, monkeypatch):
    # A misspelt --only (run_all.sh's DATA_ONLY) prepared every video, measured nothing and exited 0.
    import bench_data

    def never(*a, **k):
        raise AssertionError("videos prepared before --only was checked")

    monkeypatch.setattr(bench_data, "make_videos", never)
    argv = ["--device", "cpu", "--out", str(tmp_path / "d.json"), "--only", "pyav,dali-gpu"]
    with pytest.raises(SystemExit, match=r"--only: no variant starts with 'dali-gpu'; on cpu:\n  pyav h264"):
        bench_data.main(argv)
    assert not (tmp_path / "d.json").exists()


def test_bench_data_fails_when_every_variant_fails_and_says_why(tmp_path, monkeypatch, capsys):
    import bench_data

    def no_dali(args, root, overrides):
        raise ModuleNotFoundError("No module named 'nvidia.dali'")

    def empty_sets(args, root):  # the videos are not what this test is about
        sets = {name: root / name for name in ("h264", "vp9", "h264_gop4")}
        for folder in sets.values():
            folder.mkdir()
        return sets

    monkeypatch.setattr(bench_data, "make_videos", empty_sets)
    monkeypatch.setattr(bench_data, "build_frame_store", lambda *a, **k: None)
    monkeypatch.setattr(bench_data, "measure", no_dali)
    out = tmp_path / "d.json"
    argv = "--device cpu --num-videos 1 --seconds 1 --fps 4 --batches 1 --batch-size 1 --size 32 --workers 0"
    assert bench_data.main(argv.split() + ["--only", "pyav", "--out", str(out)]) == 1  # was 0: "OK"
    rows = json.loads(out.read_text())["results"]
    assert rows and all(r["error"] == "ModuleNotFoundError: No module named 'nvidia.dali'" for r in rows)
    table = capsys.readouterr().out.split("frames/s at L=32")[1]
    assert "|      error | ModuleNotFoundError: No module named 'nvidia.dali' |" in table


def test_bench_ops_keeps_the_cases_timed_before_it_was_stopped(small_ops, tmp_path, monkeypatch):
    # run_all.sh gives the ops step 60 s; the report was written only at the end, so a timeout lost it all.
    real, calls = small_ops.time_calls, []

    def stopped_on_third_case(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # stands in for the step's timeout
        return real(*a, **k)

    monkeypatch.setattr(small_ops, "time_calls", stopped_on_third_case)
    out = tmp_path / "ops.json"
    with pytest.raises(KeyboardInterrupt):
        small_ops.main(["--device", "cpu", "--reps", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["complete"] is False and report["device"] == "cpu" and "targets" not in report
    assert [(r["op"], r["pass_"]) for r in report["results"] if r["impl"] == "eager"] == [
        ("temporal_mean", "fwd"),
        ("lse_aggregate", "fwd"),
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["ops.json"]


def test_ablation_ratios_are_never_against_a_step_other_than_eager(tmp_path):
    # The eager step failed to build (its error is a "build" row): every step was shown "vs eager" against
    # the first step that ran, here 1.00x for +channels_last and 1.25x for +fused_ops.
    ablation = dict(panel="ablation", n_train=16, frames_per_clip=1, batch=8, mfu=None, peak_gib=1.0)
    rows = [
        dict(panel="build", path="eager", n_train=0, frames_per_clip=0, batch=0, error="OutOfMemoryError: x")
    ]
    rows += [
        dict(ablation, path="+channels_last", median_ms=80.0, frames_per_s=100.0, eager_frames_per_s=None),
        dict(ablation, path="+fused_ops", median_ms=64.0, frames_per_s=125.0, eager_frames_per_s=None),
    ]
    text = _summary(tmp_path, _result(rows))
    assert "| +channels_last | 80.0 | 100 | -x |" in text and "| +fused_ops | 64.0 | 125 | -x |" in text
    assert "- (build) eager Ntrain=0 T=0: OutOfMemoryError: x" in text


@pytest.mark.parametrize("value", ["nan", "0", "-5", "inf"])
def test_figure5_refuses_a_peak_that_gives_no_mfu(value, capsys):
    # nan was accepted and written as NaN (not JSON) in every row's MFU; 0 was a ValueError traceback
    import memory_vs_ntrain

    with pytest.raises(SystemExit) as stop:
        memory_vs_ntrain.parse_args(["--device", "cpu", "--small", "--peak-tflops", value])
    assert stop.value.code == 2
    assert f"argument --peak-tflops: must be a positive number, got {float(value)}" in capsys.readouterr().err


def test_a_sigterm_while_a_point_is_recorded_still_saves_that_point(tmp_path, monkeypatch):
    # Seen with `timeout 10`: the point's line was printed, then SIGTERM stopped the run before the point
    # reached <tag>.partial.json ("stopped before any point was measured"). Recording defers the signal.
    import signal

    import memory_vs_ntrain

    real_write, partial_writes = Path.write_text, []

    def terminated_while_writing(self, text, *a, **k):
        if '"complete": false' in text and '"stopped"' not in text:
            partial_writes.append(self.name)
            if len(partial_writes) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
        return real_write(self, text, *a, **k)

    previous = signal.signal(signal.SIGTERM, _not_handled)
    monkeypatch.setattr(Path, "write_text", terminated_while_writing)
    argv = "--device cpu --small --no-compile --paths eager --panels d --frames 1 2 4 --steps 1 --warmup 1"
    argv = argv.split() + ["--time-batch", "1", "--threads", "1", "--no-plot", "--out-dir", str(tmp_path)]
    try:
        assert memory_vs_ntrain.main(argv + ["--tag", "w"]) == 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)
    rows = json.loads((tmp_path / "w.partial.json").read_text())["rows"]
    assert [r["frames_per_clip"] for r in rows] == [1, 2]  # the point being recorded is saved, then it stops


def test_a_speed_path_that_fails_to_build_still_leaves_the_memory_path_its_searches(tmp_path, monkeypatch):
    # The optimized path builds twice (no checkpointing for panels b/d, checkpointing for a/c): when the
    # first build failed, the memory panels' build was skipped too, with no row saying so.
    import memory_vs_ntrain

    from clipbert.perf.measure import Point

    built, searched = [], []

    def build(cfg, options, device, optimizer=True):
        built.append((options.name, options.checkpoint_transformer))
        if options.name == "optimized" and not options.checkpoint_transformer:
            raise RuntimeError("fused kernel missing")
        return types.SimpleNamespace(options=options)

    def search(step, cfg, *, panel, n_clips, frames, **kw):
        searched.append((step.options.name, step.options.checkpoint_transformer))
        return Point(panel, step.options.name, n_clips, frames, 4, max_batch_exact=True, first_failure=5)

    monkeypatch.setattr(memory_vs_ntrain, "build_train_step", build)
    monkeypatch.setattr(memory_vs_ntrain, "measure_max_batch", search)
    argv = "--device cpu --small --no-compile --paths optimized --panels ab --ntrain 1 --no-plot --tag o"
    assert memory_vs_ntrain.main(argv.split() + ["--out-dir", str(tmp_path)]) == 0
    assert built == [("optimized", False), ("optimized", True)] and searched == [("optimized", True)]
    rows = json.loads((tmp_path / "o.json").read_text())["rows"]
    assert [(r["panel"], r["error"]) for r in rows] == [
        ("build", "RuntimeError: fused kernel missing"),
        ("a", None),
    ]
