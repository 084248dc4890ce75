"""`make demo` (clipbert/demo.py): its two stage configs, and what a rerun does with an older output dir."""

import json
from pathlib import Path

import pytest

from clipbert import demo
from clipbert.train import config as C
from clipbert.train.loop import TrainingDiverged


def test_stage_configs_chain_visual_words_into_retrieval():
    words = C.load(demo.WORDS_CONFIG)
    retrieval = C.load(demo.DEMO_CONFIG)
    # stage 1 trains only the visual-word loss, so its transformer is untouched and no evaluation runs
    assert words.train.visual_word_loss > 0 and words.train.visual_word_steps == words.train.max_steps
    assert words.train.eval_every == -1 and not words.eval.final_eval
    # stage 2 keeps the loss, so the exported stage-1 model (with the head) loads strictly
    assert retrieval.train.visual_word_loss > 0 and retrieval.train.visual_word_steps == 0
    assert words.model_config() == retrieval.model_config()


def _write_run(cfg, out):
    out.mkdir(parents=True, exist_ok=True)  # the demo records its inputs there first
    resolved = {**cfg.to_dict(), "resolved_model": cfg.model_config().to_dict()}
    (out / "config.json").write_text(json.dumps(resolved, indent=2, default=str))
    (out / "checkpoints").mkdir(exist_ok=True)


def test_a_rerun_resumes_its_own_run_and_sets_aside_another(tmp_path, capsys):
    out = tmp_path / "retrieval"
    same = C.load(demo.DEMO_CONFIG, [f"train.output_dir={out}", "train.resume=auto"])
    _write_run(same, out)
    demo.set_aside_if_changed(same)
    assert (out / "checkpoints").is_dir()  # same config: resume=auto continues it

    other = C.load(demo.DEMO_CONFIG, [f"train.output_dir={out}", "train.resume=auto", "train.lr=0.01"])
    demo.set_aside_if_changed(other)
    assert not out.exists() and (tmp_path / "retrieval.previous" / "checkpoints").is_dir()
    assert "moved to" in capsys.readouterr().out
    demo.set_aside_if_changed(other)  # nothing there any more: nothing to do


def test_a_stopped_stage_ends_the_demo(tmp_path, monkeypatch, capsys):
    # Ctrl-C checkpoints stage 1 and returns; the demo then started stage 2 from the missing stage-1 model.
    import torch

    import clipbert.train.engine
    import clipbert.train.run

    calls = []

    def stopped_run(cfg, device):
        calls.append(cfg.train.output_dir)
        return {"reason": "signal", "step": 3}

    meta = {"counts": {"msrvtt_ret": {"test": 50}}}
    monkeypatch.setattr(demo, "ensure_benchmark", lambda data_dir: meta)
    monkeypatch.setattr(clipbert.train.run, "run", stopped_run)
    monkeypatch.setattr(clipbert.train.engine, "init_distributed", lambda device: None)
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda: None)
    assert (
        demo.main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")])
        == clipbert.train.run.STOPPED
    )
    assert calls == [str(tmp_path / "out" / "visual_words")]  # stage 2 never started
    assert "stopped at step 3 (signal)" in capsys.readouterr().out


def _patch_training(monkeypatch, run):
    import torch

    import clipbert.train.engine
    import clipbert.train.run

    monkeypatch.setattr(clipbert.train.run, "run", run)
    monkeypatch.setattr(clipbert.train.engine, "init_distributed", lambda device: None)
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda: None)


META = {"version": 2, "counts": {"msrvtt_ret": {"test": 50}}, "chance": {"msrvtt_ret": {"test": 0.02}}}


def _argv(tmp_path):
    return ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")]


def test_a_bad_config_exits_2_before_generating(tmp_path, monkeypatch, capsys):
    def no_generation(data_dir):
        raise AssertionError("the benchmark was generated before the configs were checked")

    monkeypatch.setattr(demo, "ensure_benchmark", no_generation)
    assert demo.main([*_argv(tmp_path), "--set", "train.lr=fast"]) == 2
    assert "train.lr" in capsys.readouterr().err


@pytest.mark.parametrize(
    "error, code",
    [
        (FileNotFoundError("videos/video0001.mp4 not found"), 2),
        (TrainingDiverged("20 bad steps in a row"), 3),
    ],
)
def test_training_errors_exit_with_their_code(tmp_path, monkeypatch, capsys, error, code):
    def failing_run(cfg, device):
        raise error

    monkeypatch.setattr(demo, "ensure_benchmark", lambda data_dir: META)
    _patch_training(monkeypatch, failing_run)
    assert demo.main(_argv(tmp_path)) == code
    assert str(error) in capsys.readouterr().err


def _safetensors(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data


TENSOR = {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}


class FakeTraining:
    """Writes what a run leaves in its output dir: config.json, perf.json when it trains (a finished run
    keeps its own), stage 1's exported model (`stage1_weights`); returns perf.json, stage 2's `metrics` and,
    as run() does, whether the run had finished before."""

    def __init__(self):
        self.stage1_weights, self.metrics, self.trained = b"\0\0\0\0", {}, []

    def __call__(self, cfg, device):
        out = Path(cfg.train.output_dir)
        finished_before = (out / "perf.json").exists()
        if not finished_before:
            _write_run(cfg, out)
            (out / "perf.json").write_text(json.dumps({"wall_s": 90.0}))
            self.trained.append(out.name)
        if out.name == "visual_words":
            (out / "model").mkdir(exist_ok=True)
            (out / "model" / "model.safetensors").write_bytes(_safetensors(TENSOR, self.stage1_weights))
        metrics = self.metrics if out.name == "retrieval" else None
        return {
            "reason": "done",
            "step": 5,
            "metrics": metrics,
            "perf": json.loads((out / "perf.json").read_text()),
            "finished_before": finished_before,
        }


def test_a_retrained_stage_1_sets_stage_2_aside(tmp_path, monkeypatch, capsys):
    training = FakeTraining()
    monkeypatch.setattr(demo, "ensure_benchmark", lambda data_dir: META)
    _patch_training(monkeypatch, training)
    assert demo.main(_argv(tmp_path)) == 0
    assert training.trained == ["visual_words", "retrieval"]
    assert demo.main(_argv(tmp_path)) == 0  # the same stage-1 model: stage 2's finished run stands
    assert training.trained == ["visual_words", "retrieval"]
    assert not (tmp_path / "out" / "retrieval.previous").exists()

    training.stage1_weights = b"\0\0\0\1"  # stage 1 trained anew (another benchmark, another stage-1 config)
    assert demo.main(_argv(tmp_path)) == 0
    assert training.trained[2:] == ["retrieval"]
    assert (tmp_path / "out" / "retrieval.previous" / "checkpoints").is_dir()
    assert "stage1_model changed" in capsys.readouterr().out


def test_a_regenerated_benchmark_sets_both_stages_aside(tmp_path, monkeypatch):
    training = FakeTraining()
    monkeypatch.setattr(demo, "ensure_benchmark", lambda data_dir: META)
    _patch_training(monkeypatch, training)
    demo.main(_argv(tmp_path))
    monkeypatch.setattr(demo, "ensure_benchmark", lambda data_dir: {**META, "version": 3})
    demo.main(_argv(tmp_path))
    assert training.trained[2:] == ["visual_words", "retrieval"]


def test_the_summary_of_a_rerun_without_metrics(tmp_path, monkeypatch, capsys):
    training = FakeTraining()
    monkeypatch.setattr(demo, "ensure_benchmark", lambda data_dir: META)
    _patch_training(monkeypatch, training)
    training.metrics = {"t2v_r1": 24.0}
    assert demo.main(_argv(tmp_path)) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert "R@1 24.0% (chance 2.0%, 12.0x)" in line and "trained in this run" in line

    training.metrics = {}  # e.g. eval.final_eval=false: no test metrics
    assert demo.main(_argv(tmp_path)) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert "R@1 n/a (chance 2.0%, n/a)" in line
    assert "both stages had finished before" in line and "training 3.0 min" in line
    summary = json.loads((tmp_path / "out" / "demo_summary.json").read_text())
    assert summary["r1_over_chance"] is None and summary["stages_trained_now"] == []


def test_the_benchmark_is_regenerated_when_not_ready(tmp_path, capsys):
    pytest.importorskip("av", reason="PyAV is not installed")
    data = tmp_path / "data"
    demo.ensure_benchmark(data, num_videos=3, size="tiny")
    assert "meta.json is missing" in capsys.readouterr().out
    demo.ensure_benchmark(data, num_videos=3, size="tiny")
    assert "reusing" in capsys.readouterr().out
    (data / "meta.json").write_text('{"version": 2, "ar')  # cut off
    meta = demo.ensure_benchmark(data, num_videos=3, size="tiny")
    assert "cut off" in capsys.readouterr().out
    assert json.loads((data / "meta.json").read_text()) == meta


def test_the_model_digest_ignores_the_safetensors_metadata_order(tmp_path):
    files = {
        "a": _safetensors({"__metadata__": {"format": "pt", "clipbert": "1"}, **TENSOR}, b"\0\0\0\0"),
        "b": _safetensors({"__metadata__": {"clipbert": "1", "format": "pt"}, **TENSOR}, b"\0\0\0\0"),
        "c": _safetensors({"__metadata__": {"clipbert": "1", "format": "pt"}, **TENSOR}, b"\0\0\0\1"),
    }
    for name, data in files.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(data)
    digests = {name: demo.model_digest(tmp_path / name) for name in files}
    assert digests["a"] == digests["b"] != digests["c"]


def test_the_report_names_the_weights_best_on_val_when_they_differ_from_the_final_ones(tmp_path):
    summaries = [{"metrics": {"t2v_r1": 20.0}, "best": {"step": 365, "test": {"t2v_r1": 28.0}}, "step": 1460}]
    result = demo._summary(summaries, ["retrieval"], META, 60.0)
    assert (result["best_val_step"], result["test_t2v_r1_best_val"]) == (365, 28.0)
    assert "R@1 20.0% (chance 2.0%, 10.0x; the weights best on val (step 365) 28.0%)" in demo._report(
        result, tmp_path
    )
    same = demo._summary([{**summaries[0], "best": {"step": 1460}}], ["retrieval"], META, 60.0)
    assert "best on val" not in demo._report(same, tmp_path)  # the final weights were the best: said once
