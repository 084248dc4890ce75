"""The trainer through the DALI and frame-store backends (on the CPU: DALI decodes the VP9 synthetic set, the
frame store is built from it): a stopped and resumed run is the uninterrupted one, a run repeats itself with
0 or 2 loader workers and whatever DALI's speed options, evaluation ranks as through PyAV, a bad video or
store entry is skipped and counted in bad_inputs.jsonl without breaking the resume, two processes train
every example once an epoch, and a resume through another backend says so. The loaders' own tests:
test_data_dali.py, test_frame_store_edge_cases.py; the trainer's with PyAV: test_resume_task_kinds.py."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_fakes import make_config

from clipbert.train.run import run

pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed")

pytestmark = pytest.mark.usefixtures("cpu_world")

CPU = torch.device("cpu")
SMALL = 8  # training items kept: 4 steps an epoch at batch 2


@pytest.fixture(scope="module")
def vp9_bench(tmp_path_factory):
    """The tiny synthetic set in VP9 (DALI's CPU decoder reads no H.264), with SMALL training items a task."""
    from clipbert.data import synthetic

    out = tmp_path_factory.mktemp("vp9_bench")
    synthetic.generate(out, 12, 1, codec="vp9", size="tiny", workers=1)
    shutil.copytree(out / "annotations", out / "all_annotations")  # for the evaluation's test split
    for path in (out / "annotations").glob("*_train.jsonl"):
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:SMALL]))
    return out


@pytest.fixture(scope="module")
def store(vp9_bench, tmp_path_factory):
    from clipbert.data.build_frame_store import build_frame_store

    path = tmp_path_factory.mktemp("store") / "frames.h5"
    build_frame_store(vp9_bench / "videos", path, fps=4.0, workers=0, progress=False)
    return path


BACKENDS = {
    "dali": {"backend": "dali"},
    "dali packed": {"backend": "dali", "dali_pack": 2, "dali_pipelines": 2, "dali_order": "none"},
    "frame store": {"backend": "frame_store"},
    "frame store by dali": {"backend": "frame_store", "frame_store_reader": "dali"},
}


def _data(bench, store, backend: str, **more) -> dict:
    data = {"ann_dir": str(bench / "annotations"), "video_dir": str(bench / "videos"), **BACKENDS[backend]}
    if data["backend"] == "frame_store":
        data["frame_store"] = str(store)
    return {**data, **more}


def _config(out, data: dict, task="msrvtt_qa", **train):
    plan = {"epochs": 2, "eval_every": -1, "save_every": 0, **train}
    return make_config(out, task=task, data=data, train=plan, eval={"final_eval": False})


def _steps(out) -> list[dict]:
    return [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]


def _result(out) -> tuple[list[dict], dict]:
    return _steps(out), load_file(out / "model" / "model.safetensors")


def _assert_same_run(got: tuple[list[dict], dict], want: tuple[list[dict], dict]) -> None:
    (steps, weights), (want_steps, want_weights) = got, want
    assert [s["step"] for s in steps] == [s["step"] for s in want_steps]
    for a, b in zip(steps, want_steps, strict=True):
        a, b = {k: a[k] for k in ("step", "loss", "lr")}, {k: b[k] for k in ("step", "loss", "lr")}
        assert a == b, (a, b)
    differ = [name for name in want_weights if not torch.equal(weights[name], want_weights[name])]
    assert not differ, differ


# The pack's resume is the bad-input case below; dali_trim=false is bit for bit "dali" (speed options). Each
# test keeps the backends whose code it alone reaches: the suite has a 15-minute budget.
@pytest.mark.parametrize("backend", ["dali", "frame store", "frame store by dali"])
def test_a_stopped_and_resumed_run_is_the_uninterrupted_one(vp9_bench, store, tmp_path, backend):
    data = _data(vp9_bench, store, backend)
    run(_config(tmp_path / "full", data), CPU)
    full = _result(tmp_path / "full")
    assert len(full[0]) == 8
    out = tmp_path / "split"
    # stopped mid-epoch, then at the epoch's end, then resumed to the end
    assert run(_config(out, data, stop_after_steps=3), CPU)["step"] == 3
    assert run(_config(out, data, stop_after_steps=4, resume="auto"), CPU)["step"] == 4
    assert run(_config(out, data, resume="auto"), CPU)["reason"] == "done"
    _assert_same_run(_result(out), full)


@pytest.mark.parametrize("backend", ["dali packed", "frame store"])
def test_a_run_repeats_itself_with_0_or_2_workers(vp9_bench, store, tmp_path, backend):
    runs = []
    for workers in (0, 2):
        out = tmp_path / str(workers)
        run(
            _config(out, _data(vp9_bench, store, backend, num_workers=workers, prefetch_factor=1), epochs=1),
            CPU,
        )
        runs.append(_result(out))
    _assert_same_run(runs[1], runs[0])


@pytest.fixture(scope="module")
def dali_run(vp9_bench, tmp_path_factory):
    """An epoch through DALI with the default options."""
    out = tmp_path_factory.mktemp("dali_run")
    run(_config(out, _data(vp9_bench, None, "dali"), epochs=1), CPU)
    return _result(out)


@pytest.mark.parametrize(
    "options",
    [
        {"dali_pipelines": 2, "dali_order": "none", "dali_pack": 3},
        {"dali_trim": False, "dali_build_index": False},
    ],
)
def test_dalis_speed_options_leave_the_training_bit_for_bit(vp9_bench, dali_run, tmp_path, options):
    # They change how DALI is fed (pipelines, decode order, cut files, packs, its own index), not the frames
    run(_config(tmp_path, _data(vp9_bench, None, "dali", **options), epochs=1), CPU)
    _assert_same_run(_result(tmp_path), dali_run)


@pytest.fixture(scope="module")
def trained(vp9_bench, tmp_path_factory):
    """(a retrieval model trained through PyAV for 4 steps, an ann_dir whose test split has every video)."""
    ann = tmp_path_factory.mktemp("eval") / "annotations"
    shutil.copytree(vp9_bench / "annotations", ann)
    captions = {}
    for name in ("msrvtt_ret_train.jsonl", "msrvtt_ret_test.jsonl"):
        for line in (vp9_bench / "all_annotations" / name).read_text().splitlines():
            row = json.loads(line)
            captions.setdefault(row["clip_name"], row["caption"])
    rows = [json.dumps({"caption": c, "clip_name": v}) for v, c in sorted(captions.items())]
    (ann / "msrvtt_ret_test.jsonl").write_text("\n".join(rows) + "\n")
    out = tmp_path_factory.mktemp("trained")
    data = {"ann_dir": str(ann), "video_dir": str(vp9_bench / "videos")}
    run(_config(out, data, task="msrvtt_ret", epochs=1), CPU)
    return out / "model", ann


def _eval_scores(out, data: dict, model, monkeypatch) -> tuple[dict, torch.Tensor]:
    """eval.only on the test split: (its metrics, the [Q, V] log p(match) scores they came from)."""
    from clipbert.train import evaluate

    seen = []
    real = evaluate.M.retrieval_metrics

    def spy(scores, text_to_video):
        seen.append(scores)
        return real(scores, text_to_video)

    monkeypatch.setattr(evaluate.M, "retrieval_metrics", spy)
    cfg = make_config(out, task="msrvtt_ret", data=data, eval={"only": True, "checkpoint": str(model)})
    metrics = run(cfg, CPU)["metrics"]
    (scores,) = seen
    return metrics, scores


# The reference each backend decodes alike: PyAV for DALI (the same VP9 frames), the CPU reader for a frame
# store read by DALI (the store holds 4 fps JPEGs: other frames than PyAV samples from the videos)
REFERENCE = {
    "dali": "pyav",
    "dali packed": "pyav",
    "frame store by dali": "frame store",
}


def _pyav(bench, ann) -> dict:
    return {"ann_dir": str(ann), "video_dir": str(bench / "videos")}


def _ordered_alike(scores: torch.Tensor, want: torch.Tensor, noise: float) -> list:
    """(text, video, video) triples whose order differs although their scores differ by more than `noise`."""
    gap, want_gap = scores[:, :, None] - scores[:, None, :], want[:, :, None] - want[:, None, :]
    clear = want_gap.abs() > noise  # [Q, V, V]
    return (clear & (gap.sign() != want_gap.sign())).nonzero().tolist()


@pytest.mark.parametrize("backend", list(REFERENCE))
def test_evaluation_through_the_backend_scores_as_its_reference(
    vp9_bench, store, trained, tmp_path, backend, monkeypatch
):
    model, ann = trained
    media = {"ann_dir": str(ann)}
    reference = REFERENCE[backend]
    ref_data = (
        {**_data(vp9_bench, store, reference), **media} if reference != "pyav" else _pyav(vp9_bench, ann)
    )
    want, want_scores = _eval_scores(tmp_path / "ref", ref_data, model, monkeypatch)
    got, scores = _eval_scores(
        tmp_path / "got", {**_data(vp9_bench, store, backend), **media}, model, monkeypatch
    )
    assert scores.shape == want_scores.shape == (11, 11)  # video0011 has no caption
    assert got["unscored_videos"] == got["bad_videos"] == 0
    spread = (want_scores.amax(1) - want_scores.amin(1)).min()
    # The tiny model, 4 steps trained, scores every pair within 2e-5 of log(1/2): a grey level of codec
    # difference moves a score by a third of that (measured), so near-ties may swap and R@k/meanr may differ
    # by a rank. Each text's clear orders (gaps over twice the largest difference) must stay.
    diff = (scores - want_scores).abs().max()
    assert diff < spread / 2, (diff, spread)
    noise = 2 * diff
    assert not _ordered_alike(scores, want_scores, noise)


BROKEN = "video0002"  # the training items' second video (items 5 to 7 of the SMALL)


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _undecodable(path) -> None:
    """In place of the VP9 video at `path`, an MJPEG one that probes well but that neither DALI nor PyAV
    decodes (zeroed payloads: the probe finds a VP9 file so damaged truncated; the dataset replaces it)."""
    from clipbert.data.painted import write_painted_video, zero_payloads

    path.unlink()
    zero_payloads(write_painted_video(path.with_suffix(""), 60, codec="mjpeg"), first=1)


def _corrupt_entry(store) -> None:
    import h5py
    import numpy as np

    with h5py.File(store, "a") as h5:
        jpeg = h5[f"videos/{BROKEN}/jpeg"]
        for i in range(len(jpeg)):
            jpeg[i] = np.frombuffer(b"\xff\xd8\xff\xe0broken", dtype=np.uint8)


BREAKS = {
    "dali, truncated video": ("dali", _truncate),
    "dali, undecodable video": ("dali", _undecodable),
    "dali packed, undecodable video": ("dali packed", _undecodable),
    "frame store, corrupt entry": ("frame store", _corrupt_entry),
    "frame store by dali, corrupt entry": ("frame store by dali", _corrupt_entry),
}


def _bad_inputs(out) -> list[dict]:
    path = out / "bad_inputs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.parametrize(
    "case", ["dali, truncated video", "dali packed, undecodable video", "frame store, corrupt entry"]
)
def test_a_bad_input_is_skipped_counted_and_resumed_exactly(vp9_bench, store, tmp_path, case):
    backend, damage = BREAKS[case]
    videos, copy = tmp_path / "videos", tmp_path / "frames.h5"
    shutil.copytree(vp9_bench / "videos", videos)
    shutil.copy(store, copy)
    if damage is _corrupt_entry:
        damage(copy)
    else:
        damage(next(videos.glob(f"{BROKEN}.*")))
    data = {**_data(vp9_bench, copy, backend), "video_dir": str(videos)}
    run(_config(tmp_path / "full", data), CPU)
    full = _result(tmp_path / "full")
    assert len(full[0]) == 8
    counted = _bad_inputs(tmp_path / "full")
    # each epoch meets the video's 3 items (a file path, or the store's video id)
    assert [(e["epoch"], e["bad_files"], e["hits"]) for e in counted] == [(0, 1, 3), (1, 1, 3)], counted
    assert all(BROKEN in name for e in counted for name in e["files"]), counted
    out = tmp_path / "split"
    assert run(_config(out, data, stop_after_steps=3), CPU)["step"] == 3
    assert run(_config(out, data, resume="auto"), CPU)["reason"] == "done"
    _assert_same_run(_result(out), full)
    assert _bad_inputs(out) == counted


def test_a_video_dali_cannot_read_is_decoded_by_pyav_reported_once_and_resumed_exactly(vp9_bench, tmp_path):
    from clipbert.data.painted import write_painted_video

    # an H.264 video among the VP9 ones: DALI's CPU decoder reads none, so the loader sends it to PyAV
    videos = tmp_path / "videos"
    shutil.copytree(vp9_bench / "videos", videos)
    (videos / f"{BROKEN}.webm").unlink()
    write_painted_video(videos / BROKEN, 40, codec="h264")
    data = {**_data(vp9_bench, None, "dali"), "video_dir": str(videos)}
    run(_config(tmp_path / "full", data), CPU)
    full = _result(tmp_path / "full")
    counted = _bad_inputs(tmp_path / "full")
    assert [(e["epoch"], e["bad_files"], e.get("pyav_fallbacks")) for e in counted] == [(0, 0, 1)], counted
    out = tmp_path / "split"
    assert run(_config(out, data, stop_after_steps=3), CPU)["step"] == 3
    assert run(_config(out, data, resume="auto"), CPU)["reason"] == "done"
    _assert_same_run(_result(out), full)
    assert _bad_inputs(out) == counted


@pytest.mark.parametrize("backend", ["dali"])
def test_evaluations_on_the_way_leave_the_training_as_it_was(vp9_bench, store, tmp_path, backend):
    data = _data(vp9_bench, store, backend)
    run(_config(tmp_path / "plain", data, epochs=1), CPU)
    run(_config(tmp_path / "evals", data, epochs=1, eval_every=1), CPU)
    _assert_same_run(_result(tmp_path / "evals"), _result(tmp_path / "plain"))
    assert len((tmp_path / "evals" / "metrics.jsonl").read_text().splitlines()) >= 4


@pytest.mark.parametrize("backend", ["dali"])
def test_a_sigterm_mid_window_with_workers_resumes_exactly(vp9_bench, store, tmp_path, backend, monkeypatch):
    import os
    import signal

    from clipbert.train import loop

    data = _data(vp9_bench, store, backend, num_workers=2, prefetch_factor=1)
    run(_config(tmp_path / "full", data, grad_accum=2), CPU)
    full = _result(tmp_path / "full")
    sent = []
    real = loop.Trainer._accumulation_boundary

    def boundary(self, last_in_epoch: bool) -> bool:
        ends = real(self, last_in_epoch)
        if not ends and not sent and self.state.epoch == 1:
            sent.append(self.state.micro_in_epoch)
            os.kill(os.getpid(), signal.SIGTERM)
        return ends

    out = tmp_path / "split"
    with monkeypatch.context() as patch:
        patch.setattr(loop.Trainer, "_accumulation_boundary", boundary)
        assert run(_config(out, data, grad_accum=2), CPU)["reason"] == "signal"
    assert sent
    assert run(_config(out, data, grad_accum=2, resume="auto"), CPU)["reason"] == "done"
    _assert_same_run(_result(out), full)


@pytest.mark.parametrize("case", [c for c in BREAKS if "truncated" not in c])
def test_evaluation_through_the_backend_reports_a_bad_video_and_scores_the_others(
    vp9_bench, store, trained, tmp_path, case, monkeypatch
):
    backend, damage = BREAKS[case]
    model, ann = trained
    videos, copy = tmp_path / "videos", tmp_path / "frames.h5"
    shutil.copytree(vp9_bench / "videos", videos)
    shutil.copy(store, copy)
    damage(copy) if damage is _corrupt_entry else damage(next(videos.glob(f"{BROKEN}.*")))
    data = {**_data(vp9_bench, copy, backend), "ann_dir": str(ann), "video_dir": str(videos)}
    got, scores = _eval_scores(tmp_path / "got", data, model, monkeypatch)
    # DALI's loaders drop the row (the video ranks last for its texts); the CPU store reader's dataset puts
    # the next example's video in its place (docs/TRAINING.md, "Evaluation")
    dropped = "dali" in backend
    assert (got["num_videos"], got["bad_videos"], got["unscored_videos"]) == (11, 1, int(dropped))
    if dropped:
        assert torch.isneginf(scores[:, 2]).all() and torch.isfinite(scores[:, [0, 1, *range(3, 11)]]).all()


def two_process_worker(bench: str, videos: str, out: str) -> None:
    """Runs in each of two processes: 2 epochs of msrvtt_qa through DALI on `videos`, then its test
    evaluation; each rank writes the (epoch, example indices) of the batches it trained on."""
    import sys

    from clipbert.train import loop
    from clipbert.train.engine import init_distributed

    torch.set_num_threads(1)
    init_distributed(CPU)
    rank = torch.distributed.get_rank()
    seen = []
    real = loop.Trainer._micro_step

    def spy(self, batch, *args):
        seen.append((self.state.epoch, batch["index"].tolist()))
        return real(self, batch, *args)

    loop.Trainer._micro_step = spy
    bench = Path(bench)
    data = {"ann_dir": str(bench / "annotations"), "video_dir": videos, "backend": "dali"}
    cfg = make_config(out, task="msrvtt_qa", data=data, train={"eval_every": -1, "save_every": 0})
    result = run(cfg, CPU)
    (Path(out) / f"seen{rank}.json").write_text(json.dumps(seen))
    if rank == 0:
        (Path(out) / "result.json").write_text(json.dumps(result["metrics"]))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    sys.exit(0)


def test_two_processes_train_every_example_once_an_epoch_through_dali(vp9_bench, tmp_path):
    from torchrun_helper import run_two_processes

    # BROKEN's examples (5 to 7) are dropped by whichever rank meets them, and counted once over the ranks
    videos = tmp_path / "videos"
    shutil.copytree(vp9_bench / "videos", videos)
    _undecodable(next(videos.glob(f"{BROKEN}.*")))
    out = tmp_path / "two"
    proc = run_two_processes(__file__, [str(vp9_bench), str(videos), str(out)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    seen = [json.loads((out / f"seen{rank}.json").read_text()) for rank in (0, 1)]
    for epoch in (0, 1):
        indices = sorted(i for rank in seen for e, batch in rank if e == epoch for i in batch)
        assert indices == [0, 1, 2, 3, 4], (epoch, seen)
    counted = _bad_inputs(out)
    assert [(e["epoch"], e["bad_files"], e["hits"]) for e in counted] == [(0, 1, 3), (1, 1, 3)], counted
    # the evaluation counts each test question once, and scores as one process does
    two = json.loads((out / "result.json").read_text())
    data = {**_data(vp9_bench, None, "dali"), "video_dir": str(videos)}
    cfg = make_config(
        tmp_path / "one", task="msrvtt_qa", data=data, eval={"only": True, "checkpoint": str(out / "model")}
    )
    one = run(cfg, CPU)["metrics"]
    assert two["num_examples"] == one["num_examples"] == 16
    assert two["acc"] == one["acc"]


if __name__ == "__main__":  # the torchrun worker of test_two_processes_...
    import sys

    two_process_worker(*sys.argv[1:4])


@pytest.mark.parametrize("before, after", [("pyav", "frame store"), ("dali", "pyav")])
def test_a_resume_through_another_backend_says_so(vp9_bench, store, tmp_path, train_log, before, after):
    # Another decoder gives other frames (a 4 fps store's nearest frames, or another codec's rounding), so
    # the resumed run is not the interrupted one: it went on without a word, where another batch-making key
    # (data.num_clips, say) is named in a warning
    def data(backend):
        if backend == "pyav":
            return _pyav(vp9_bench, vp9_bench / "annotations")
        return _data(vp9_bench, store, backend)

    assert run(_config(tmp_path, data(before), epochs=1, stop_after_steps=1), CPU)["step"] == 1
    assert run(_config(tmp_path, data(after), epochs=1, resume="auto"), CPU)["reason"] == "done"
    now = BACKENDS.get(after, {"backend": "pyav"})["backend"]
    was = BACKENDS.get(before, {"backend": "pyav"})["backend"]
    assert f"the run's plan changed since the checkpoint (data.backend {was} -> {now})" in train_log.text
