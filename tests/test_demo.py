"""`make demo` (clipbert/demo.py): its two stage configs, and what a rerun does with an older output dir."""

import json

from clipbert import demo
from clipbert.train import config as C


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
    out.mkdir(parents=True)
    resolved = {**cfg.to_dict(), "resolved_model": cfg.model_config().to_dict()}
    (out / "config.json").write_text(json.dumps(resolved, indent=2, default=str))
    (out / "checkpoints").mkdir()


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
