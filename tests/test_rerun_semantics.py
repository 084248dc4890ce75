"""Running things a second time: a rerun reuses nothing stale and loses nothing it should keep."""

import importlib
import importlib.util
import json
import os
from pathlib import Path

import h5py
import pytest

# PyAV is a hard dependency, but the GPU test machine runs without it: only the tests that encode skip
needs_av = pytest.mark.skipif(importlib.util.find_spec("av") is None, reason="PyAV is not installed")


def _build(videos, out):
    from clipbert.data import build_frame_store as bfs

    return bfs.build_frame_store(videos, out, fps=5.0, workers=0, progress=False)


def write_painted_video(*args, **kwargs):
    from clipbert.data.painted import write_painted_video

    return write_painted_video(*args, **kwargs)


@needs_av
def test_frame_store_rerun_reencodes_a_video_replaced_under_the_same_name(tmp_path):
    videos, out = tmp_path / "videos", tmp_path / "frames.h5"
    videos.mkdir()
    write_painted_video(videos / "a", 20, fps=10, codec="h264")
    write_painted_video(videos / "b", 20, fps=10, codec="h264")
    assert sorted(_build(videos, out)["written"]) == ["a", "b"]
    # unchanged videos: nothing re-encoded
    assert _build(videos, out) == {"written": [], "skipped": ["a", "b"], "failed": []}
    # "a" replaced by another video (a re-download, a fixed transcode) after the store was built: its old
    # entry was skipped as "already there" and training read the old video's frames
    os.unlink(videos / "a.mp4")
    write_painted_video(videos / "a", 40, fps=10, codec="h264")
    result = _build(videos, out)
    assert result == {"written": ["a"], "skipped": ["b"], "failed": []}
    with h5py.File(out) as h5:
        assert h5["videos/a"].attrs["source_num_frames"] == 40 and len(h5["videos/a/jpeg"]) == 20


@needs_av
def test_frame_store_rerun_adds_new_videos_and_keeps_entries_it_cannot_check(tmp_path):
    videos, out = tmp_path / "videos", tmp_path / "frames.h5"
    videos.mkdir()
    write_painted_video(videos / "a", 20, fps=10, codec="h264")
    _build(videos, out)
    with h5py.File(out, "a") as h5:  # as a store built before source digests wrote it
        del h5["videos/a"].attrs["source_digest"]
    write_painted_video(videos / "b", 20, fps=10, codec="h264")
    assert _build(videos, out) == {"written": ["b"], "skipped": ["a"], "failed": []}
    os.unlink(videos / "b.mp4")  # a video removed from the folder: its entry stays readable
    assert _build(videos, out) == {"written": [], "skipped": ["a"], "failed": []}
    with h5py.File(out) as h5:
        assert sorted(h5["videos"]) == ["a", "b"] and h5["videos/b"].attrs["complete"]
    # a file that cannot be read now (a dangling link) cannot be checked: its entry is kept, not deleted
    (videos / "b.mp4").symlink_to(tmp_path / "gone.mp4")
    assert _build(videos, out)["skipped"] == ["a", "b"]
    with h5py.File(out) as h5:
        assert h5["videos/b"].attrs["complete"] and len(h5["videos/b/jpeg"]) == 10


@needs_av
def test_synthetic_refuses_to_delete_or_overwrite_files_it_did_not_write(tmp_path, capsys):
    from clipbert.data.synthetic import generate
    from clipbert.data.synthetic.__main__ import main

    # a real dataset's folder given as --out by mistake: MSR-VTT's videos are named video0.mp4 ...
    # video9999.mp4, and its converted annotations msrvtt_ret_train.jsonl: all were deleted or overwritten
    (tmp_path / "videos").mkdir()
    (tmp_path / "annotations").mkdir()
    (tmp_path / "videos" / "video7.mp4").write_bytes(b"a real video")
    (tmp_path / "annotations" / "msrvtt_ret_train.jsonl").write_text('{"caption": "mine"}\n')
    with pytest.raises(FileExistsError, match=r"videos/video7.mp4.*empty or new --out"):
        generate(tmp_path, num_videos=3, seed=0, size="tiny", workers=1)
    with pytest.raises(SystemExit) as stop:
        main(["--out", str(tmp_path), "--num-videos", "3", "--size", "tiny", "--workers", "1"])
    assert stop.value.code == 2 and "files that no generation marked as its own" in capsys.readouterr().err
    assert (tmp_path / "videos" / "video7.mp4").read_bytes() == b"a real video"
    assert (tmp_path / "annotations" / "msrvtt_ret_train.jsonl").read_text() == '{"caption": "mine"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotations", "videos"]
    # another tool's meta.json is no mark of the generator's
    (tmp_path / "meta.json").write_text('{"dataset": "MSR-VTT"}')
    with pytest.raises(FileExistsError, match=r"videos/video7.mp4"):
        generate(tmp_path, num_videos=3, seed=0, size="tiny", workers=1)


@needs_av
def test_synthetic_regenerates_over_its_own_finished_or_cut_off_output(tmp_path, monkeypatch):
    from clipbert.data.synthetic import generate, not_ready_reason

    generate_module = importlib.import_module("clipbert.data.synthetic.generate")  # the package's generate

    generate(tmp_path, num_videos=3, seed=0, size="tiny", workers=1)
    (tmp_path / "notes.txt").write_text("the user's, of another name: kept")
    generate(tmp_path, num_videos=4, seed=1, size="tiny", workers=1)  # another seed's set: replaced
    assert not_ready_reason(tmp_path, 4, 1, "h264", "tiny") is None
    assert len(list((tmp_path / "videos").iterdir())) == 4 and (tmp_path / "notes.txt").exists()

    def killed(job):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate_module, "make_video", killed)
    with pytest.raises(KeyboardInterrupt):  # a generation cut off: no meta.json, the old videos still there
        generate(tmp_path, num_videos=3, seed=2, size="tiny", workers=1)
    monkeypatch.undo()
    generate(tmp_path, num_videos=3, seed=2, size="tiny", workers=1)  # the rerun is not refused
    assert not_ready_reason(tmp_path, 3, 2, "h264", "tiny") is None
    assert len(list((tmp_path / "videos").iterdir())) == 3
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["meta.json", "notes.txt"]


# ---------------------------------------------------------------- benchmarks' default result paths

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def benchmarks_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))


@pytest.mark.usefixtures("benchmarks_path")
def test_bench_ops_default_out_never_replaces_an_earlier_result(tmp_path, monkeypatch, capsys):
    import bench_ops

    # a second run on the same day (another --reps, or one its caller's time limit stops after a case: the
    # report is rewritten after each case) replaced the day's complete result without a word
    monkeypatch.setattr(bench_ops, "ROOT", tmp_path)
    monkeypatch.setattr(bench_ops, "run", lambda device, reps, out=None: {"device": device, "reps": reps})
    monkeypatch.setattr(bench_ops, "check_targets", lambda report: [])
    results = tmp_path / "benchmarks" / "results"
    assert bench_ops.main(["--device", "cpu", "--reps", "3"]) == 0
    (first,) = results.glob("ops_cpu_*.json")
    assert bench_ops.main(["--device", "cpu", "--reps", "1"]) == 0
    assert json.loads(first.read_text())["reps"] == 3
    second = first.with_name(f"{first.stem}_run2.json")
    assert json.loads(second.read_text()) == {"device": "cpu", "reps": 1, "targets": [], "complete": True}
    assert f"{first.name} holds an earlier result" in capsys.readouterr().out
    out = tmp_path / "mine.json"  # an --out given is the user's choice: written over
    out.write_text("{}")
    assert bench_ops.main(["--device", "cpu", "--reps", "2", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["reps"] == 2


@pytest.mark.usefixtures("benchmarks_path")
def test_bench_data_default_out_never_replaces_an_earlier_result(tmp_path, monkeypatch):
    import bench_data

    monkeypatch.setattr(bench_data, "REPO", tmp_path)
    first = bench_data.default_out("cpu")
    assert first.parent == tmp_path / "benchmarks" / "results" and first.name.startswith("data_cpu_")
    first.parent.mkdir(parents=True)
    first.write_text('{"complete": "the earlier run"}')
    assert bench_data.default_out("cpu") == first.with_name(f"{first.stem}_run2.json")
    first.with_name(f"{first.stem}_run2.json").write_text("{}")
    assert bench_data.default_out("cpu") == first.with_name(f"{first.stem}_run3.json")


@pytest.mark.usefixtures("benchmarks_path")
def test_figure5_default_tag_never_replaces_an_earlier_result(tmp_path, capsys):
    import memory_vs_ntrain

    # `memory_vs_ntrain.py --device cpu --small [--panels a]` wrote over the committed fig5_cpu_small.* (a
    # complete run of all four panels) with whatever this run measured; here a --merge, which measures nothing
    row = {"panel": "b", "path": "eager", "n_train": 1, "frames_per_clip": 1, "batch": 2, "median_ms": 5.0}
    run = {"config": {"image_size": 64}, "device": "cpu", "date_utc": "2026-11-30T00:00:00", "rows": [row]}
    (tmp_path / "run.json").write_text(json.dumps(run))
    earlier = tmp_path / "fig5_cpu.json"
    earlier.write_text('{"the earlier": "result"}')
    argv = ["--device", "cpu", "--no-plot", "--out-dir", str(tmp_path), "--merge", str(tmp_path / "run.json")]
    assert memory_vs_ntrain.main(argv) == 0
    assert json.loads(earlier.read_text()) == {"the earlier": "result"}
    assert json.loads((tmp_path / "fig5_cpu_run2.json").read_text())["rows"] == [row]
    assert (tmp_path / "fig5_cpu_run2.md").is_file() and not (tmp_path / "fig5_cpu.md").exists()
    assert "fig5_cpu.json holds an earlier result" in capsys.readouterr().out


# ---------------------------------------------------------------- training into a used output_dir


@pytest.mark.usefixtures("cpu_world")
def test_a_fresh_run_into_the_dir_of_an_evaluation_is_refused(tmp_path):
    import torch
    from test_train_fakes import fake_factory, make_config

    from clipbert.train.config import ConfigError
    from clipbert.train.run import run

    cpu, train = torch.device("cpu"), {"epochs": 1, "eval_every": -1}
    run(make_config(tmp_path / "a", train=train), cpu, fake_factory())
    # eval.only of run a's model, its results kept in their own dir (metrics.jsonl, eval_config.json) ...
    evaluation = {"only": True, "checkpoint": str(tmp_path / "a" / "model")}
    run(make_config(tmp_path / "d", train=train, eval=evaluation), cpu, fake_factory())
    before = (tmp_path / "d" / "metrics.jsonl").read_text()
    # ... then a fresh training run into that dir: it appended its evaluations to the other model's, so its
    # metrics.jsonl and curves held a test row of weights it never had
    with pytest.raises(ConfigError, match=r"holds evaluations of other weights \(metrics.jsonl"):
        run(make_config(tmp_path / "d", train=train), cpu, fake_factory())
    assert (tmp_path / "d" / "metrics.jsonl").read_text() == before
