"""A new user's first steps (README's quick tour, docs/TRAINING.md): the likeliest first mistakes end in one
line that says what to do, not in a traceback, an out-of-memory kill or a silent success."""

import pytest
import torch

from clipbert.train import config as C

pytestmark = pytest.mark.usefixtures("cpu_world")

PAPER_CONFIGS = sorted(p.stem for p in C.CONFIG_DIR.glob("ds_*.json") if "synthetic" not in p.stem)


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_the_paper_configs_ask_for_a_gpu(name):
    # auto would fall back to the CPU and run the base model at L=448 with 8 workers until memory runs out
    assert C.load(name).train.device == "cuda"


@pytest.mark.parametrize("name", ["ds_synthetic", "ds_synthetic_words", "ds_synthetic_vqa"])
def test_the_synthetic_configs_run_on_the_cpu(name):
    assert C.load(name).train.device == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_a_paper_config_without_a_gpu_stops_at_once_saying_how_to_run_it():
    from clipbert.train.engine import pick_device

    # train.py turns this ConfigError into one line and exit 2 (test_config.py), before any data or model
    with pytest.raises(
        C.ConfigError, match=r"no CUDA device is visible: --set train\.device=cpu runs here"
    ) as err:
        pick_device(C.load("ds_msrvtt.json").train.device)
    assert "ds_synthetic.json" in str(err.value)


def test_a_mistyped_config_name_names_the_nearest_shipped_one():
    with pytest.raises(FileNotFoundError, match=r"did you mean ds_synthetic\.json\? shipped: ds_anet\.json"):
        C.resolve_path("ds_synthtic.json")
    with pytest.raises(FileNotFoundError, match=r"did you mean ds_msrvtt_qa\.json\?"):
        C.resolve_path("ds_msrvt_qa")
    with pytest.raises(FileNotFoundError) as err:  # nothing near: the list alone, no guess from ".json"
        C.resolve_path("nope.json")
    assert "did you mean" not in str(err.value) and "ds_synthetic_words.json" in str(err.value)


def test_training_before_generating_the_benchmark_says_where_it_looked_and_what_to_run(tmp_path, monkeypatch):
    from clipbert.train.run import run

    monkeypatch.chdir(tmp_path)  # data/synthetic/annotations (the config's, relative) is not here
    cfg = C.load("ds_synthetic_words.json", ["train.output_dir=run"])
    with pytest.raises(FileNotFoundError) as err:  # train.py: one line, exit 2
        run(cfg, torch.device("cpu"))
    where = f"(relative to the current directory {tmp_path})"
    missing = "data/synthetic/annotations/msrvtt_ret_train.jsonl"
    assert str(err.value).startswith(
        f"annotation file not found: {missing}: data.ann_dir is not a directory {where}"
    )
    assert "python -m clipbert.data.synthetic --out data/synthetic" in str(err.value)


def _exported_model(cfg, directory):
    from clipbert.models.clipbert import ClipBert

    ClipBert(cfg.model_config()).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("ann_dir", ["annotations", "elsewhere"])
def test_eval_only_with_nothing_to_evaluate_is_an_error_not_a_warning_and_exit_0(
    tmp_path, ann_dir, train_log
):
    # Before: "no test split for msrvtt_ret: skipping the final evaluation", exit 0, and no metrics at all
    from clipbert.train.run import run

    model = _exported_model(C.load("ds_synthetic"), tmp_path / "model")
    (tmp_path / "annotations").mkdir()  # a directory without msrvtt_ret_test.jsonl
    sets = ["eval.only=true", f"eval.checkpoint={model}", f"data.ann_dir={tmp_path / ann_dir}"]
    cfg = C.load("ds_synthetic", sets + [f"train.output_dir={tmp_path / 'run'}"])
    with pytest.raises(FileNotFoundError) as err:  # train.py: one line, exit 2
        run(cfg, torch.device("cpu"))
    if ann_dir == "annotations":
        missing = tmp_path / "annotations" / "msrvtt_ret_test.jsonl"
        assert (
            str(err.value)
            == f"eval.only: nothing to evaluate, annotation file not found: {missing} (eval.test_split=test)"
        )
    else:
        missing = tmp_path / "elsewhere" / "msrvtt_ret_test.jsonl"
        assert str(err.value).startswith(
            f"annotation file not found: {missing}: data.ann_dir is not a directory;"
        )
    assert "skipping the final evaluation" not in train_log.text
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_the_demos_help_names_its_video_count_and_keeps_its_paragraphs(capsys):
    from clipbert import demo

    with pytest.raises(SystemExit):
        demo.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "3,000 videos" in text and "\n    python -m clipbert.demo --data data/synthetic" in text
    assert "override one config value of both stages" in text and demo.DEMO_NUM_VIDEOS == 3000


def test_the_predict_table_keeps_its_text_labels_aligned_past_t9():
    from clipbert.predict.report import format_retrieval

    texts = [f"caption {q}" for q in range(12)]
    out = {
        "unit": "video",
        "settings": {"word_score_weight": 1.0},
        "word_score": None,
        "texts": texts,
        "videos": ["a.mp4"],
        "scores": [[-1.0] * 12],
        "best_video_per_text": [{"video": "a.mp4", "score": -1.0}] * 12,
        "best_text_per_video": [{"video": "a.mp4", "text": texts[0], "score": -1.0}],
    }
    lines = format_retrieval(out)
    listed = [line for line in lines if line.endswith(("caption 0", "caption 11"))]
    assert listed == [
        "  t1   caption 0",
        "  t12  caption 11",
    ]  # before: "  t1  caption 0", "  t12  caption 11"
    assert "  t1   a.mp4  (-1.000)" in lines and "  t12  a.mp4  (-1.000)" in lines
