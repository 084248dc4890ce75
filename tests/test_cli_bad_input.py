"""Command-line tools given a bad flag, a missing input or an unwritable output: one message naming it and
exit 2 (never a traceback); Ctrl-C: exit 130 and no half-written output that a rerun would take as whole.

Each tool's main(argv) runs in-process; a Ctrl-C is a KeyboardInterrupt raised from inside the work."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

av = pytest.importorskip("av", reason="PyAV is not installed")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from clipbert.data import convert_vqa  # noqa: E402
from clipbert.data import transcode as transcode_module  # noqa: E402
from clipbert.data.painted import write_painted_video  # noqa: E402
from clipbert.data.synthetic import not_ready_reason  # noqa: E402
from clipbert.data.synthetic.__main__ import main as synthetic_main  # noqa: E402


def _exit_code(fn, argv) -> int:
    """main's exit status, whether returned or raised as SystemExit; a Ctrl-C that escapes fails the test
    (raised as is, it would stop the whole pytest session)."""
    try:
        status = fn(argv)
    except SystemExit as err:
        return err.code
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped main as a KeyboardInterrupt traceback")
    return 0 if status is None or isinstance(status, dict) else status


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("not a folder\n")
    return path


# ------------------------------------------------------------------------------- synthetic generator
def test_synthetic_rejects_a_negative_seed_before_writing(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--out", str(out), "--seed", "-1", "--size", "tiny", "--num-videos", "3", "--workers", "1"]
    assert _exit_code(synthetic_main, argv) == 2  # was numpy's ValueError traceback
    assert "argument --seed:" in capsys.readouterr().err
    assert not out.exists()


def test_synthetic_out_under_a_file_is_one_message(a_file, capsys):
    argv = ["--out", str(a_file / "bench"), "--size", "tiny", "--num-videos", "3", "--workers", "1"]
    assert _exit_code(synthetic_main, argv) == 2  # was a NotADirectoryError traceback
    err = capsys.readouterr().err
    assert "--out" in err and str(a_file / "bench") in err and "Traceback" not in err


def test_synthetic_ctrl_c_exits_130_and_leaves_no_benchmark(tmp_path, monkeypatch, capsys):
    generate_module = sys.modules["clipbert.data.synthetic.generate"]
    real = generate_module.make_video
    calls = []

    def make_then_interrupt(job):
        calls.append(job["index"])
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(generate_module, "make_video", make_then_interrupt)
    out = tmp_path / "out"
    argv = ["--out", str(out), "--size", "tiny", "--num-videos", "3", "--workers", "1"]
    assert _exit_code(synthetic_main, argv) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not_ready_reason(out, 3, 0, "h264", "tiny") is not None  # a rerun regenerates it


# ------------------------------------------------------------------------------------------ transcode
@pytest.fixture
def videos(tmp_path) -> Path:
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("a", "b"):
        write_painted_video(folder / name, 4, codec="h264", height=16, width=16)
    return folder


@pytest.mark.parametrize("which", ["missing", "file"])
def test_transcode_bad_videos_folder_is_a_usage_error(tmp_path, a_file, capsys, which):
    source = tmp_path / "nowhere" if which == "missing" else a_file
    out = tmp_path / "out"
    assert _exit_code(transcode_module.main, ["--videos", str(source), "--out", str(out)]) == 2
    assert f"argument --videos: {source}" in capsys.readouterr().err  # was a FileNotFoundError traceback
    assert not out.exists()  # the output folder was created before the check


def test_transcode_empty_videos_folder_is_not_a_success(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = ["--videos", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]
    assert _exit_code(transcode_module.main, argv) == 2  # was "transcoded 0 video(s)", exit 0
    assert "no video files" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["is_file", "under_file"])
def test_transcode_unwritable_out_is_a_usage_error(videos, a_file, capsys, where):
    out = a_file if where == "is_file" else a_file / "copies"
    assert _exit_code(transcode_module.main, ["--videos", str(videos), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"argument --out: cannot create folder {out}" in err and "Traceback" not in err


@pytest.mark.parametrize("flag, value", [("--max-side", "-5"), ("--gop", "0"), ("--gop", "-3")])
def test_transcode_rejects_nonsense_numbers(videos, tmp_path, capsys, flag, value):
    argv = ["--videos", str(videos), "--out", str(tmp_path / "out"), flag, value]
    assert _exit_code(transcode_module.main, argv) == 2  # -5: every video an IndexError; gop 0: silent
    assert f"argument {flag}:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_transcode_ctrl_c_exits_130_and_a_rerun_resumes(videos, tmp_path, monkeypatch, capsys):
    real = transcode_module._copy_frames
    calls = []

    def copy_then_interrupt(source, out, *args):
        calls.append(1)
        if len(calls) > 1:  # the second copy is open (its .partial exists) when Ctrl-C comes
            raise KeyboardInterrupt
        return real(source, out, *args)

    monkeypatch.setattr(transcode_module, "_copy_frames", copy_then_interrupt)
    out = tmp_path / "out"
    argv = ["--videos", str(videos), "--out", str(out)]
    assert _exit_code(transcode_module.main, argv) == 130
    assert "interrupted after 1 of 2" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4"]  # no .partial, no cut-off b.mp4
    monkeypatch.setattr(transcode_module, "_copy_frames", real)
    assert _exit_code(transcode_module.main, argv) == 0
    assert "1 of 2 already transcoded" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4", "b.mp4"]


# ---------------------------------------------------------------------------------------- convert_vqa
@pytest.fixture
def vqa(tmp_path) -> list[str]:
    questions = {
        "data_subtype": "val2014",
        "questions": [{"image_id": 1, "question": "what?", "question_id": 10}],
    }
    annotations = {
        "annotations": [
            {
                "question_id": 10,
                "image_id": 1,
                "answers": [{"answer": "yes"}],
                "multiple_choice_answer": "yes",
                "answer_type": "yes/no",
                "question_type": "what",
            }
        ]
    }
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    return ["--questions", str(tmp_path / "q.json"), "--annotations", str(tmp_path / "a.json")]


def test_convert_vqa_missing_or_malformed_input_is_one_message(tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    missing = ["--questions", str(tmp_path / "nope.json"), "--image-dir", "val2014", "--out", str(out)]
    assert _exit_code(convert_vqa.main, missing) == 2  # was a FileNotFoundError traceback
    assert "nope.json" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{bad")
    malformed = ["--questions", str(tmp_path / "bad.json"), "--image-dir", "val2014", "--out", str(out)]
    assert _exit_code(convert_vqa.main, malformed) == 2  # was an AnnotationError traceback
    assert "bad.json:1: malformed JSON" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("vocab", [True, False])
def test_convert_vqa_rejects_a_min_count_below_one(vqa, tmp_path, capsys, vocab):
    argv = [*vqa, "--image-dir", "val2014", "--out", str(tmp_path / "o.jsonl"), "--min-count", "0"]
    if vocab:  # with a vocabulary: was a ValueError traceback; without: silently ignored
        argv += ["--ans2label", str(tmp_path / "v.json")]
    assert _exit_code(convert_vqa.main, argv) == 2
    assert "argument --min-count:" in capsys.readouterr().err


def test_convert_vqa_out_that_is_a_folder_leaves_no_tmp(vqa, tmp_path, capsys):
    out = tmp_path / "folder"
    out.mkdir()
    assert _exit_code(convert_vqa.main, [*vqa, "--image-dir", "val2014", "--out", str(out)]) == 2
    assert str(out) in capsys.readouterr().err  # was an IsADirectoryError traceback
    assert not (tmp_path / "folder.tmp").exists()


def test_convert_vqa_vocab_under_a_file_writes_nothing(vqa, tmp_path, a_file, capsys):
    out = tmp_path / "o.jsonl"
    argv = [*vqa, "--image-dir", "val2014", "--out", str(out), "--ans2label", str(a_file / "v.json")]
    argv += ["--min-count", "1"]
    assert _exit_code(convert_vqa.main, argv) == 2  # was a FileExistsError traceback
    assert str(a_file) in capsys.readouterr().err
    assert not out.exists()  # the JSONL was written before the vocabulary failed


def test_convert_vqa_ctrl_c_exits_130_and_leaves_no_partial_file(vqa, tmp_path, monkeypatch, capsys):
    def interrupted_replace(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_vqa.os, "replace", interrupted_replace)
    out = tmp_path / "o.jsonl"
    assert _exit_code(convert_vqa.main, [*vqa, "--image-dir", "val2014", "--out", str(out)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "q.json"]  # no o.jsonl(.tmp)


# ----------------------------------------------------------------------------- checkpoint converter
def test_weights_ctrl_c_during_save_leaves_no_converted_looking_dir(tmp_path, monkeypatch, capsys):
    from clipbert.models import weights
    from clipbert.models.clipbert import CONFIG_NAME, WEIGHTS_NAME, ClipBert

    out = tmp_path / "out"
    out.mkdir()
    (out / WEIGHTS_NAME).write_bytes(b"an earlier run's weights")

    def save_config_then_interrupt(self, directory):
        self.config.save(Path(directory) / CONFIG_NAME)
        raise KeyboardInterrupt

    monkeypatch.setattr(
        weights, "load_original_clipbert", lambda model, source: weights.LoadReport(loaded=["x"])
    )
    monkeypatch.setattr(ClipBert, "save_pretrained", save_config_then_interrupt)
    argv = [str(tmp_path / "ckpt.pt"), str(out), "--preset", "tiny"]
    assert _exit_code(weights.main, argv) == 130
    assert list(out.iterdir()) == []  # neither the new config nor the weights it does not describe


# ---------------------------------------------------------------------------------------- bench_ops
@pytest.fixture
def bench_ops(monkeypatch):
    import bench_ops

    def must_not_run(*args, **kwargs):
        raise AssertionError("the benchmark ran before the bad flag was reported")

    monkeypatch.setattr(bench_ops, "run", must_not_run)
    return bench_ops


@pytest.mark.parametrize("reps", ["-2", "0"])
def test_bench_ops_rejects_reps_below_one(bench_ops, tmp_path, capsys, reps):
    argv = ["--device", "cpu", "--reps", reps, "--out", str(tmp_path / "o.json")]
    assert _exit_code(bench_ops.main, argv) == 2  # -2 wrote negative times as results
    assert "argument --reps:" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["folder", "under_file"])
def test_bench_ops_checks_out_before_timing(bench_ops, tmp_path, a_file, capsys, where):
    out = tmp_path if where == "folder" else a_file / "o.json"
    assert _exit_code(bench_ops.main, ["--device", "cpu", "--reps", "1", "--out", str(out)]) == 2
    assert "argument --out:" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- memory_vs_ntrain
@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--device", "tpu"], "--device"),
        (["--steps", "-1"], "--steps"),
        (["--ntrain", "1", "0"], "--ntrain"),
        (["--threads", "0"], "--threads"),
        (["--mem-cap-gib", "-1"], "--mem-cap-gib"),
        (["--time-budget-s", "nan"], "--time-budget-s"),
    ],
)
def test_memory_vs_ntrain_rejects_nonsense_before_running(tmp_path, capsys, argv, flag):
    import memory_vs_ntrain

    with pytest.raises(SystemExit) as exit_info:  # --device tpu was a RuntimeError traceback
        memory_vs_ntrain.parse_args(["--small", "--out-dir", str(tmp_path), *argv])
    assert exit_info.value.code == 2 and f"argument {flag}:" in capsys.readouterr().err


def test_memory_vs_ntrain_checks_out_dir_before_running(a_file, capsys):
    import memory_vs_ntrain

    with pytest.raises(SystemExit) as exit_info:
        memory_vs_ntrain.parse_args(["--small", "--out-dir", str(a_file / "results")])
    assert exit_info.value.code == 2 and "argument --out-dir:" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- demo
@pytest.mark.parametrize("flag", ["--out", "--data"])
def test_demo_folder_under_a_file_is_reported_before_generating(tmp_path, a_file, monkeypatch, capsys, flag):
    from clipbert import demo

    def must_not_generate(data_dir):
        raise AssertionError("the benchmark was generated before the bad folder was reported")

    monkeypatch.setattr(demo, "ensure_benchmark", must_not_generate)
    folders = {"--out": str(tmp_path / "out"), "--data": str(tmp_path / "data"), flag: str(a_file / "x")}
    assert demo.main([arg for pair in folders.items() for arg in pair]) == 2  # was a traceback
    assert f"{flag} {a_file / 'x'}: cannot create the folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- bench_data
@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--num-videos", "0"], "--num-videos"),
        (["--fps", "0"], "--fps"),
        (["--seconds", "-1"], "--seconds"),
        (["--seconds", "nan"], "--seconds"),
        (["--batch-size", "0"], "--batch-size"),
        (["--videos", "/nonexistent/videos"], "--videos"),
    ],
)
def test_bench_data_rejects_nonsense_before_preparing(tmp_path, capsys, argv, flag):
    import bench_data

    with pytest.raises(SystemExit) as exit_info:
        bench_data.parse_args(["--device", "cpu", "--out", str(tmp_path / "o.json"), *argv])
    assert exit_info.value.code == 2 and f"argument {flag}:" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["folder", "under_file"])
def test_bench_data_checks_out_before_preparing(tmp_path, a_file, capsys, where):
    import bench_data

    out = tmp_path if where == "folder" else a_file / "o.json"
    with pytest.raises(SystemExit) as exit_info:
        bench_data.parse_args(["--device", "cpu", "--out", str(out)])
    assert exit_info.value.code == 2 and "argument --out:" in capsys.readouterr().err
