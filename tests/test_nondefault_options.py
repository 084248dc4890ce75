"""Predict and evaluation under non-default model and task options: the paper's Table 3 aggregations, T = 2
with 3D temporal fusion, MSRA/caffe BGR input, Ntest and the test sampling, image size and text length.

predict must read each of them from the export (predict.json, clipbert_config.json) and score as the
evaluation does; the evaluation must aggregate as the option says (checked against a hand computation)."""

import copy
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from test_predict import retrieval_bench
from test_train_fakes import make_config

from clipbert.data.annotations import read_jsonl
from clipbert.data.datasets import group_texts
from clipbert.models import ClipBert
from clipbert.predict.cli import main
from clipbert.train import metrics as M
from clipbert.train.data import TaskData
from clipbert.train.evaluate import evaluate_retrieval
from clipbert.train.export import PREDICT_INFO, predict_info, write_predict_info
from clipbert.train.run import resolved_model_config, write_resolved_config
from clipbert.train.tasks import to_device

pytestmark = pytest.mark.usefixtures("cpu_world")

CPU = torch.device("cpu")
RET_VIDEOS = 4  # the retrieval test split is rewritten to this many videos, two captions each

# Every option away from make_config's defaults (lse, T = 1, mean fusion, torchvision/RGB, Ntest 3, uniform)
RETRIEVAL_OPTIONS = {
    "task": {"aggregation": "max"},
    "data": {"frames_per_clip": 2, "num_test_clips": 2, "image_size": 96, "max_text_len": {"msrvtt_ret": 9}},
    "model": {"temporal_fusion": "conv3d", "backbone_style": "msra"},
}
QA_OPTIONS = {
    "task": {"aggregation": "mean"},
    "data": {"frames_per_clip": 2, "num_test_clips": 4, "clip_seconds": 0.5},
    "model": {"temporal_fusion": "conv2plus1d"},
}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return retrieval_bench(tmp_path_factory.mktemp("synthetic"), 8, RET_VIDEOS)


def _export(root, bench, task, options, **train):
    """A run's output dir as training leaves it (config.json, model/ with predict.json), with `options`
    merged into the task, data and model sections, and weights that score clips apart (_spread_scores)."""
    data = {"ann_dir": str(bench / "annotations"), "video_dir": str(bench / "videos"), **options["data"]}
    cfg = make_config(root, task=task, train=train, data=data, model=options["model"])
    for key, value in options["task"].items():
        setattr(cfg.task, key, value)
    data = TaskData(cfg, cfg.model_config(), CPU)
    model_cfg = resolved_model_config(cfg, data)
    write_resolved_config(cfg, model_cfg, root)
    torch.manual_seed(0)
    model = ClipBert(model_cfg)
    _spread_scores(model, data)
    model.save_pretrained(root / "model")
    write_predict_info(root / "model", predict_info(cfg, model_cfg, data))
    return cfg, root


def _spread_scores(model, data) -> None:
    """Weights whose clips score apart. Why: at its initialization (std 0.02) the model maps every clip to
    nearly the same pooled output, so its clips' logits differ by 1e-5 and lse, mean and max give the same
    numbers to the tests' tolerance. Unit-gain weights and a scaled-up head make them differ by about 0.5;
    the head's bias then centres each class's logits on the first test batch, so that no softmax saturates
    (a log p(match) of -1e-17 under every aggregation would tell none apart). The 3D temporal fusion is
    re-drawn too: initialized, it is a Dirac (identity) convolution, scoring T frames as their mean does."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2 and name.startswith(("cnn.", "visual_embeddings.", "encoder.", "pooler.")):
                param.normal_(0, param[0].numel() ** -0.5)  # [out, fan_in...]
        for layer in (model.classifier[0], model.classifier[2]):
            layer.weight.normal_(0, layer.weight.shape[1] ** -0.5)
            layer.bias.zero_()
        model.classifier[2].weight.mul_(15)
        dataset, loader = data.eval("test")
        batch = next(iter(loader))
        ids, mask = batch.get("input_ids"), batch.get("attention_mask")
        if ids is None:  # retrieval: the loader gives the videos, the dataset the texts
            b = len(batch["frames"])
            ids, mask = (t[None, :4].expand(b, -1, -1) for t in (dataset.input_ids, dataset.attention_mask))
        scores = model.eval()(batch["frames"], ids, mask)  # [B, M, N, K]
        model.classifier[2].bias.sub_(scores.float().mean((0, 1, 2)))


@pytest.fixture(scope="module")
def retrieval_run(bench, tmp_path_factory):
    return _export(tmp_path_factory.mktemp("ret"), bench, "msrvtt_ret", RETRIEVAL_OPTIONS)


@pytest.fixture(scope="module")
def qa_run(bench, tmp_path_factory):
    return _export(tmp_path_factory.mktemp("qa"), bench, "msrvtt_qa", QA_OPTIONS)


def _video(bench, video_id):
    return str(bench / "videos" / f"{video_id}.mp4")


def _predict(argv, tmp_path, capsys):
    """(exit code, the --json results, stderr) of one in-process run."""
    out = tmp_path / "out.json"
    code = main([*argv, "--json", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    return code, (json.loads(out.read_text()) if code == 0 else None), err


def _eval_scores(cfg, out_dir, monkeypatch):
    """(dataset, loader, the model, the [Q, V] log p(match) matrix evaluate_retrieval ranks)."""
    model = ClipBert.from_pretrained(out_dir / "model").eval()
    dataset, loader = TaskData(cfg, model.config, CPU).eval("test")
    seen = []
    rank = M.retrieval_metrics
    monkeypatch.setattr(M, "retrieval_metrics", lambda s, t: seen.append(s) or rank(s, t))
    evaluate_retrieval(model, dataset, loader, cfg, CPU, torch.float32, False)
    return dataset, loader, model, seen[0]


def test_retrieval_predict_scores_are_the_evaluations_under_nondefault_options(
    bench, retrieval_run, tmp_path, capsys, monkeypatch
):
    cfg, out_dir = retrieval_run
    dataset, _, model, eval_scores = _eval_scores(cfg, out_dir, monkeypatch)
    assert model.config.backbone_style == "msra" and model.config.channel_order == "BGR"
    groups = group_texts("msrvtt_ret", read_jsonl(bench / "annotations" / "msrvtt_ret_test.jsonl"))
    texts = [text for _, captions in groups for text in captions]  # the evaluation's text order
    videos = [_video(bench, v) for v in dataset.video_ids]
    argv = ["--model", str(out_dir / "model"), *[f"--video={v}" for v in videos]]
    code, out, err = _predict([*argv, *[f"--text={t}" for t in texts]], tmp_path, capsys)
    assert code == 0, err
    settings = out["settings"]
    assert (settings["aggregation"], settings["num_test_clips"], settings["frames_per_clip"]) == ("max", 2, 2)
    assert settings["image_size"] == 96
    torch.testing.assert_close(torch.tensor(out["scores"]), eval_scores.t())  # [V, Q]


def test_retrieval_max_aggregation_is_the_max_over_clips(retrieval_run, monkeypatch):
    """Paper Table 3's max pooling: each class's score is its largest over the Ntest clips, then softmax; the
    evaluation's log p(match) is so computed from the model's per-clip scores."""
    cfg, out_dir = retrieval_run
    dataset, loader, model, eval_scores = _eval_scores(cfg, out_dir, monkeypatch)
    frames = torch.cat([to_device(b, CPU, torch.float32)["frames"] for b in loader])  # [V, N, T, 3, L, L]
    assert frames.shape[1:3] == (2, 2) and frames.shape[-1] == 96
    ids, mask = dataset.input_ids, dataset.attention_mask  # [Q, Lt]
    assert ids.shape[1] <= 9  # data.max_text_len cuts the captions
    with torch.no_grad():
        per_clip = model(frames, ids.expand(len(frames), -1, -1), mask.expand(len(frames), -1, -1))
    per_clip = per_clip.float()  # [V, Q, N, 2]
    assert not torch.allclose(per_clip[:, :, 0], per_clip[:, :, 1])  # the clips differ: max is not trivial
    top = per_clip.amax(2)  # [V, Q, 2]
    expected = F.log_softmax(top, -1)[..., 1]  # log p(match) of the max-pooled scores
    torch.testing.assert_close(eval_scores, expected.t(), rtol=1e-4, atol=1e-5)


def test_qa_predict_probs_are_the_evaluations_mean_over_clips(bench, qa_run, tmp_path, capsys):
    cfg, out_dir = qa_run
    model = ClipBert.from_pretrained(out_dir / "model").eval()
    dataset, loader = TaskData(cfg, model.config, CPU).eval("test")
    batch = to_device(next(iter(loader)), CPU, torch.float32)
    assert batch["frames"].shape[1:3] == (4, 2)  # Ntest = 4 clips of T = 2 frames
    with torch.no_grad():
        per_clip = model(batch["frames"], batch["input_ids"], batch["attention_mask"])[:, 0]  # [B, N, K]
    expected = F.softmax(per_clip.float().mean(1), -1)  # paper Table 3's mean pooling
    label2ans = {label: answer for answer, label in dataset.ans2label.items()}
    examples = [dataset.examples[i] for i in batch["index"].tolist()]
    argv = ["--model", str(out_dir / "model"), "--top-k", "3"]
    for row, example in enumerate(examples):
        video, question = _video(bench, example["video_id"]), example["question"]
        code, out, err = _predict([*argv, "--video", video, "--question", question], tmp_path, capsys)
        assert code == 0, err
        assert out["settings"]["aggregation"] == "mean" and out["settings"]["num_test_clips"] == 4
        top = out["results"][0]["top_answers"]
        want = expected[row].topk(3)
        assert [a["answer"] for a in top] == [label2ans[i] for i in want.indices.tolist()]
        torch.testing.assert_close(torch.tensor([a["prob"] for a in top]), want.values, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "key, value",
    [("frames_per_clip", 1), ("image_size", 64), ("max_text_len", {"msrvtt_ret": 20})],
    ids=["frames_per_clip", "image_size", "max_text_len"],
)
def test_a_setting_the_model_cannot_honour_exits_2_naming_the_key(
    retrieval_run, bench, tmp_path, capsys, key, value
):
    """A config with another T than the trained conv3d's (or another L or text length) is refused by name, not
    scored as if the weights were trained for it."""
    _, out_dir = retrieval_run
    config = json.loads((out_dir / "model" / PREDICT_INFO).read_text())
    config["data"][key] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    argv = ["--model", str(out_dir), "--config", str(path), "--video", _video(bench, "video0000")]
    code = main([*argv, "--text", "a red circle", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and key in err and "Traceback" not in err


MC_OPTIONS = {
    "task": {"aggregation": "max"},
    "data": {"frames_per_clip": 2, "num_test_clips": 3, "test_sampling": "uniform", "image_size": 96},
    "model": {"temporal_fusion": "conv3d", "backbone_style": "msra"},
}


@pytest.mark.parametrize("task", ["tgif_action", "msrvtt_mc"])
def test_multiple_choice_scores_are_the_evaluations_max_over_clips(bench, tmp_path, capsys, task):
    cfg, out_dir = _export(tmp_path / "run", bench, task, MC_OPTIONS)
    model = ClipBert.from_pretrained(out_dir / "model").eval()
    dataset, loader = TaskData(cfg, model.config, CPU).eval("test")
    batch = to_device(next(iter(loader)), CPU, torch.float32)
    with torch.no_grad():
        per_clip = model(batch["frames"][:1], batch["input_ids"][:1], batch["attention_mask"][:1])[0].float()
    top = per_clip.amax(1)  # [O, N, K] -> [O, K]: each class's largest score over the Ntest clips
    # mc: a softmax over the options' scores; mc_itm: each option caption's own log p(match)
    expected = F.log_softmax(top[:, 0], 0) if task == "tgif_action" else F.log_softmax(top, -1)[:, 1]
    example = dataset.examples[batch["index"][0].item()]
    video = example.get("gif_name") or example["clip_name"]
    argv = [
        "--model",
        str(out_dir),
        "--video",
        _video(bench, video),
        *[f"--option={o}" for o in example["options"]],
    ]
    if task == "tgif_action":
        argv += ["--question", example["question"]]
    code, out, err = _predict(argv, tmp_path, capsys)
    assert code == 0, err
    torch.testing.assert_close(torch.tensor(out["results"][0]["scores"]), expected, rtol=1e-4, atol=1e-5)


def test_a_config_given_with_other_sampling_and_ntest_is_scored_as_its_evaluation(
    bench, retrieval_run, tmp_path, capsys, monkeypatch
):
    """--config may change what the weights do not fix (Ntest, the sampling, the aggregation): predict then
    scores as that config's evaluation does, not as predict.json's."""
    cfg, out_dir = retrieval_run
    cfg = copy.deepcopy(cfg)
    cfg.data.test_sampling, cfg.data.num_test_clips, cfg.task.aggregation = "middle", 4, "mean"
    dataset, _, _, eval_scores = _eval_scores(cfg, out_dir, monkeypatch)
    config = json.loads((out_dir / "model" / PREDICT_INFO).read_text())
    config["data"].update(test_sampling="middle", num_test_clips=4)
    config["task"]["aggregation"] = "mean"
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    groups = group_texts("msrvtt_ret", read_jsonl(bench / "annotations" / "msrvtt_ret_test.jsonl"))
    texts = [text for _, captions in groups for text in captions]
    videos = [_video(bench, v) for v in dataset.video_ids]
    argv = ["--model", str(out_dir), "--config", str(path), *[f"--video={v}" for v in videos]]
    code, out, err = _predict([*argv, *[f"--text={t}" for t in texts]], tmp_path, capsys)
    assert code == 0, err
    assert out["settings"]["num_test_clips"] == 1 and out["settings"]["sampling"] == "middle"
    torch.testing.assert_close(torch.tensor(out["scores"]), eval_scores.t())


def test_an_export_without_predict_json_takes_the_options_from_its_runs_config(
    bench, retrieval_run, tmp_path, capsys
):
    _, out_dir = retrieval_run
    old = tmp_path / "old"
    shutil.copytree(out_dir, old)
    (old / "model" / PREDICT_INFO).unlink()
    argv = ["--video", str(bench / "videos"), "--text", "a red circle", "--text", "a blue square moves"]
    code, got, err = _predict(["--model", str(old / "model"), *argv], tmp_path, capsys)
    assert code == 0, err
    _, expected, _ = _predict(["--model", str(out_dir / "model"), *argv], tmp_path, capsys)
    assert got["run_config"] == str(old / "config.json") and got["settings"] == expected["settings"]
    assert got["scores"] == expected["scores"]
