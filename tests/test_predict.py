"""`python -m clipbert.predict` on tiny exports: the scores are the evaluation's, bad inputs are reported."""

import json
import shutil

import pytest
import torch
from test_train_fakes import make_config

from clipbert.data.annotations import read_jsonl
from clipbert.data.datasets import group_texts
from clipbert.data.preprocess import normalization_for
from clipbert.models import ClipBert
from clipbert.predict.cli import main
from clipbert.predict.loading import read_run_settings
from clipbert.train import metrics as M
from clipbert.train.data import TaskData
from clipbert.train.evaluate import evaluate_retrieval
from clipbert.train.export import PREDICT_INFO, predict_info, write_predict_info
from clipbert.train.run import resolved_model_config, run, write_resolved_config
from clipbert.train.tasks import predict, to_device

CPU = torch.device("cpu")
RET_VIDEOS = 5  # the retrieval test split is rewritten to this many videos, two captions each


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return retrieval_bench(tmp_path_factory.mktemp("synthetic"), 12)


def retrieval_bench(out, num_videos: int, ret_videos: int = RET_VIDEOS):
    """A tiny synthetic benchmark in `out` whose retrieval test split is `ret_videos` training videos."""
    from clipbert.data import synthetic

    synthetic.generate(out, num_videos, 0, size="tiny", workers=1)
    # the generated test split has 2 videos: take `ret_videos` training videos' first two captions instead
    ann = out / "annotations"
    groups = group_texts("msrvtt_ret", read_jsonl(ann / "msrvtt_ret_train.jsonl"))[:ret_videos]
    lines = [{"caption": c, "clip_name": video} for video, captions in groups for c in captions[:2]]
    (ann / "msrvtt_ret_test.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return out


def _bench_config(root, bench, task, **train):
    data = {"ann_dir": str(bench / "annotations"), "video_dir": str(bench / "videos")}
    return make_config(root, task=task, train=train, data=data)


def _export(root, bench, task, **train):
    """A run's output dir as training leaves it: config.json (write_resolved_config) and model/ (an untrained
    tiny model, save_pretrained, and predict.json as run._export writes it). Returns (cfg, output dir)."""
    cfg = _bench_config(root, bench, task, **train)
    data = TaskData(cfg, cfg.model_config(), CPU)
    model_cfg = resolved_model_config(cfg, data)
    write_resolved_config(cfg, model_cfg, root)
    torch.manual_seed(0)
    ClipBert(model_cfg).save_pretrained(root / "model")
    write_predict_info(root / "model", predict_info(cfg, model_cfg, data))
    return cfg, root


@pytest.fixture(scope="module")
def retrieval_run(bench, tmp_path_factory):
    return _export(tmp_path_factory.mktemp("ret"), bench, "msrvtt_ret", visual_word_loss=1.0)


@pytest.fixture(scope="module")
def qa_run(bench, tmp_path_factory):
    return _export(tmp_path_factory.mktemp("qa"), bench, "msrvtt_qa")


@pytest.fixture(scope="module")
def vqa_run(bench, tmp_path_factory):
    return _export(tmp_path_factory.mktemp("vqa"), bench, "vqa")


@pytest.fixture(scope="module")
def pretrain_run(bench, tmp_path_factory):
    return _export(tmp_path_factory.mktemp("pretrain"), bench, "pretrain")


def _video(bench, video_id):
    return str(bench / "videos" / f"{video_id}.mp4")


def _image(bench, line: int, split: str = "val", task: str = "pretrain"):
    """The image file of annotation line `line` (image tasks' files are relative to the benchmark root)."""
    return str(bench / read_jsonl(bench / "annotations" / f"{task}_{split}.jsonl")[line]["file"])


def _predict(argv, tmp_path, capsys):
    """(exit code, the --json results, stdout, stderr) of one in-process run."""
    out = tmp_path / "out.json"
    code = main([*argv, "--json", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    return code, json.loads(out.read_text()), captured.out, captured.err


def _retrieval_eval_scores(cfg, out_dir, monkeypatch):
    """The [Q, V] matrices evaluate_retrieval ranks: with the word score, then the matching head alone."""
    model = ClipBert.from_pretrained(out_dir / "model").eval()
    data = TaskData(cfg, model.config, CPU)
    dataset, loader = data.eval("test")
    seen = []
    rank = M.retrieval_metrics
    monkeypatch.setattr(M, "retrieval_metrics", lambda s, t: seen.append(s) or rank(s, t))
    evaluate_retrieval(model, dataset, loader, cfg, CPU, torch.float32, False, data.visual_words(CPU))
    return dataset, seen


def test_retrieval_scores_are_the_evaluations(bench, retrieval_run, tmp_path, capsys, monkeypatch):
    cfg, out_dir = retrieval_run
    dataset, (with_words, itm_only) = _retrieval_eval_scores(cfg, out_dir, monkeypatch)
    groups = group_texts("msrvtt_ret", read_jsonl(bench / "annotations" / "msrvtt_ret_test.jsonl"))
    texts = [text for _, captions in groups for text in captions]  # the evaluation's text order
    videos = [_video(bench, v) for v in dataset.video_ids]
    argv = ["--model", str(out_dir / "model"), *[f"--video={v}" for v in videos]]
    code, out, stdout, _ = _predict([*argv, *[f"--text={t}" for t in texts]], tmp_path, capsys)
    assert code == 0 and out["videos"] == videos and out["texts"] == texts
    assert out["settings"]["num_test_clips"] == 3 and out["settings"]["word_score_weight"] == 1.0
    torch.testing.assert_close(torch.tensor(out["scores"]), with_words.t())  # [V, Q]
    torch.testing.assert_close(torch.tensor(out["match_log_prob"]), itm_only.t())
    assert not torch.equal(with_words, itm_only)  # the word score was on, and counted
    best = with_words.argmax(1).tolist()  # per text
    assert [b["video"] for b in out["best_video_per_text"]] == [videos[v] for v in best]
    assert "best video per text:" in stdout and "video0" in stdout


def test_word_score_weight_zero_gives_the_matching_head_alone(retrieval_run, bench, tmp_path, capsys):
    _, out_dir = retrieval_run
    argv = ["--model", str(out_dir), "--video", str(bench / "videos"), "--text", "a red circle"]
    _, with_words, _, _ = _predict(argv, tmp_path, capsys)
    code, alone, _, _ = _predict([*argv, "--word-score-weight", "0"], tmp_path, capsys)
    assert code == 0 and alone["word_score"] is None and alone["settings"]["word_score_weight"] == 0.0
    assert alone["scores"] == with_words["match_log_prob"] and alone["scores"] != with_words["scores"]


def _first_eval_batch(cfg, out_dir, split):
    """(model, the first evaluation batch, its examples, the evaluation's predicted labels, label -> answer)
    of an open-ended QA or VQA export."""
    model = ClipBert.from_pretrained(out_dir / "model").eval()
    dataset, loader = TaskData(cfg, model.config, CPU).eval(split)
    batch = to_device(next(iter(loader)), CPU, torch.float32)
    preds = predict(model, batch, cfg.task.kind, cfg.task.aggregation)["pred"].tolist()
    label2ans = {label: answer for answer, label in dataset.ans2label.items()}
    return model, batch, [dataset.examples[i] for i in batch["index"].tolist()], preds, label2ans


def test_qa_top_answers_are_the_models_prediction(bench, qa_run, tmp_path, capsys):
    cfg, out_dir = qa_run
    _, batch, examples, preds, label2ans = _first_eval_batch(cfg, out_dir, "test")
    videos = sorted({_video(bench, e["video_id"]) for e in examples})
    questions = sorted({e["question"] for e in examples})
    argv = ["--model", str(out_dir / "model"), *[f"--video={v}" for v in videos]]
    code, out, stdout, _ = _predict([*argv, *[f"--question={q}" for q in questions]], tmp_path, capsys)
    assert code == 0 and len(out["results"]) == len(videos) * len(questions)
    results = {(r["video"], r["question"]): r["top_answers"] for r in out["results"]}
    for example, pred in zip(examples, preds):
        top = results[(_video(bench, example["video_id"]), example["question"])]
        probs = [a["prob"] for a in top]
        assert len(top) == 5 and sum(probs) <= 1 + 1e-6 and probs == sorted(probs, reverse=True)
        assert all(0 < p <= 1 for p in probs)
        assert top[0]["answer"] == label2ans[pred]
    assert "1. " in stdout and "p=" in stdout


def test_multiple_choice_picks_the_models_option(bench, tmp_path_factory, tmp_path, capsys):
    cfg, out_dir = _export(tmp_path_factory.mktemp("mc"), bench, "tgif_action")
    model = ClipBert.from_pretrained(out_dir / "model").eval()
    dataset, loader = TaskData(cfg, model.config, CPU).eval("test")
    batch = to_device(next(iter(loader)), CPU, torch.float32)
    pred = predict(model, batch, "mc", cfg.task.aggregation)["pred"][0].item()
    example = dataset.examples[batch["index"][0].item()]
    options = [f"--option={o}" for o in example["options"]]
    argv = ["--model", str(out_dir), "--video", _video(bench, example["gif_name"]), *options]
    code, out, _, _ = _predict([*argv, "--question", example["question"]], tmp_path, capsys)
    assert code == 0 and out["results"][0]["chosen"] == pred
    assert sum(out["results"][0]["probs"]) == pytest.approx(1.0, abs=1e-5)  # a distribution over options


def test_corrupt_and_missing_videos_are_reported_and_skipped(bench, retrieval_run, tmp_path, capsys):
    _, out_dir = retrieval_run
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    missing = tmp_path / "missing.mp4"
    good = [_video(bench, "video0000"), _video(bench, "video0001")]
    videos = [good[0], str(corrupt), str(missing), good[1]]
    argv = ["--model", str(out_dir), *[f"--video={v}" for v in videos], "--text", "a blue square"]
    code, out, stdout, _ = _predict(argv, tmp_path, capsys)
    assert code == 0 and out["videos"] == good and len(out["scores"]) == 2
    reasons = {s["video"]: s["reason"] for s in out["skipped"]}
    assert set(reasons) == {str(corrupt), str(missing)} and reasons[str(missing)] == "missing file"
    assert "skipped 2 input(s), scored 2 video(s):" in stdout and f"{corrupt}: " in stdout
    code = main(["--model", str(out_dir), "--video", str(corrupt), "--video", str(missing), "--text", "x"])
    err = capsys.readouterr().err
    assert code == 1 and "no usable video among 2 input(s)" in err and "missing.mp4: missing file" in err


@pytest.mark.parametrize("removed", ["model.safetensors", "clipbert_config.json"])
def test_a_bad_model_dir_exits_2_naming_the_file(retrieval_run, bench, tmp_path, capsys, removed):
    _, out_dir = retrieval_run
    broken = tmp_path / "run"
    shutil.copytree(out_dir, broken)
    (broken / "model" / removed).unlink()
    code = main(["--model", str(broken / "model"), "--video", _video(bench, "video0000"), "--text", "a"])
    assert code == 2 and f"{broken / 'model' / removed} not found" in capsys.readouterr().err


def test_an_input_of_the_other_kind_is_an_argument_error_naming_the_flag(
    retrieval_run, vqa_run, bench, capsys
):
    _, ret_dir = retrieval_run
    with pytest.raises(SystemExit) as stop:
        main(["--model", str(ret_dir), "--image", _image(bench, 0), "--text", "a"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--image is not used by a msrvtt_ret (retrieval) model" in err
    assert "give --video" in err
    _, vqa_dir = vqa_run
    with pytest.raises(SystemExit) as stop:
        main(["--model", str(vqa_dir), "--video", _video(bench, "video0000"), "--question", "what?"])
    assert stop.value.code == 2 and "it scores images, give --image" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", str(vqa_dir), "--question", "what?"])
    assert "a vqa (vqa) model scores images: give --image" in capsys.readouterr().err


def test_flags_the_task_does_not_use_are_argument_errors(retrieval_run, bench, capsys):
    _, out_dir = retrieval_run
    argv = ["--model", str(out_dir), "--video", _video(bench, "video0000")]
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--text", "a", "--question", "what?"])
    assert stop.value.code == 2 and "--question is not used by a msrvtt_ret (retrieval) model" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main(argv)
    assert "give --text or --texts-file" in capsys.readouterr().err


def test_json_holds_the_table_and_runs_repeat_exactly(retrieval_run, bench, tmp_path, capsys):
    _, out_dir = retrieval_run
    texts = tmp_path / "texts.txt"
    texts.write_text("a red circle moves left\n\na small blue square\n")
    pattern = str(bench / "videos" / "video000[0-2].mp4")
    argv = ["--model", str(out_dir), "--video", pattern, "--texts-file", str(texts)]
    code, out, stdout, _ = _predict(argv, tmp_path, capsys)
    assert code == 0 and out["texts"] == ["a red circle moves left", "a small blue square"]
    assert [v[-13:] for v in out["videos"]] == ["video0000.mp4", "video0001.mp4", "video0002.mp4"]
    assert [len(row) for row in out["scores"]] == [2, 2, 2] and out["task"] == "msrvtt_ret"
    assert len(out["best_video_per_text"]) == 2 and len(out["best_text_per_video"]) == 3
    for video, row in zip(out["videos"], out["scores"]):  # the stdout table shows the same numbers
        assert f"{video[-13:]:<13}" + "".join(f"{x:>10.3f}" for x in row) in stdout
    assert _predict(argv, tmp_path, capsys)[1] == out  # deterministic: the same inputs, the same scores


def test_a_relative_ann_dir_is_found_from_the_runs_working_directory(bench, tmp_path):
    # a run started in ROOT with data.ann_dir=data/annotations writes ROOT/outputs/r/config.json
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    (root / "data" / "annotations").symlink_to(bench / "annotations")
    (root / "outputs" / "r").mkdir(parents=True)
    config = {"task": {"name": "msrvtt_ret"}, "data": {"ann_dir": "data/annotations"}}
    config["train"] = {"output_dir": "outputs/r"}
    (root / "outputs" / "r" / "config.json").write_text(json.dumps(config))
    settings = read_run_settings(root / "outputs" / "r" / "config.json", None)
    assert settings.data.ann_dir == str(root / "data" / "annotations")
    assert read_run_settings(root / "outputs" / "r" / "config.json", "/x").data.ann_dir == "/x"


def _without_paths(out: dict) -> dict:
    return {k: v for k, v in out.items() if k not in ("model", "run_config")}


def _alone(out_dir, tmp_path):
    """The export copied alone to another place, its annotations (data.ann_dir) gone as on another machine."""
    alone = tmp_path / "elsewhere" / "exported"
    shutil.copytree(out_dir / "model", alone)
    info = json.loads((alone / PREDICT_INFO).read_text())
    info["data"]["ann_dir"] = str(tmp_path / "no_annotations")
    (alone / PREDICT_INFO).write_text(json.dumps(info))
    return alone


@pytest.mark.parametrize("task", ["msrvtt_ret", "msrvtt_qa"])
def test_a_model_dir_copied_alone_scores_as_with_its_run(request, bench, tmp_path, capsys, task):
    _, out_dir = request.getfixturevalue("retrieval_run" if task == "msrvtt_ret" else "qa_run")
    asks = ["--text", "a red circle moves left", "--text", "a blue square"]
    if task == "msrvtt_qa":
        asks = ["--question", "what is moving?", "--question", "what color is the square?"]
    videos = ["--video", str(bench / "videos" / "video000[0-3].mp4")]
    # with the run: its config.json (--config) and the annotations, the path of exports before predict.json
    with_run = ["--model", str(out_dir / "model"), "--config", str(out_dir / "config.json")]
    code, expected, _, _ = _predict([*with_run, *videos, *asks], tmp_path, capsys)
    alone = _alone(out_dir, tmp_path)
    code_alone, got, _, _ = _predict(["--model", str(alone), *videos, *asks], tmp_path, capsys)
    assert code == code_alone == 0 and got["run_config"] == str(alone / PREDICT_INFO)
    assert _without_paths(got) == _without_paths(expected)
    if task == "msrvtt_ret":
        assert got["word_score"] is not None and got["settings"]["word_score_weight"] == 1.0


def test_an_export_without_predict_json_still_uses_its_runs_files(retrieval_run, bench, tmp_path, capsys):
    _, out_dir = retrieval_run
    old = tmp_path / "run"
    shutil.copytree(out_dir, old)
    (old / "model" / PREDICT_INFO).unlink()
    argv = ["--video", _video(bench, "video0000"), "--text", "a red circle"]
    code, got, _, _ = _predict(["--model", str(old / "model"), *argv], tmp_path, capsys)
    _, expected, _, _ = _predict(["--model", str(out_dir / "model"), *argv], tmp_path, capsys)
    assert code == 0 and got["run_config"] == str(old / "config.json")
    assert _without_paths(got) == _without_paths(expected)


@pytest.mark.usefixtures("cpu_world")
def test_a_training_runs_export_holds_predict_json(bench, tmp_path):
    cfg = _bench_config(tmp_path, bench, "msrvtt_qa", max_steps=1, eval_every=-1)
    cfg.eval.final_eval = False
    assert run(cfg, CPU)["reason"] == "done"
    info = json.loads((tmp_path / "model" / PREDICT_INFO).read_text())
    ans2label = json.loads((bench / "annotations" / "msrvtt_qa_ans2label.json").read_text())
    assert info["task"]["name"] == "msrvtt_qa" and info["data"]["num_test_clips"] == 3
    assert info["answers"] == sorted(ans2label, key=ans2label.get)
    assert not (tmp_path / "model" / f"{PREDICT_INFO}.tmp").exists()


def test_ann_dir_makes_the_vocabularies_come_from_the_annotations(retrieval_run, qa_run):
    ret, qa = (out_dir / "model" / PREDICT_INFO for _, out_dir in (retrieval_run, qa_run))
    assert read_run_settings(ret, None).word_vocab is not None and read_run_settings(qa, None).answers
    given = read_run_settings(qa, "/x")
    assert given.answers is None and given.data.ann_dir == "/x" and given.task.name == "msrvtt_qa"
    assert read_run_settings(ret, "/x").word_vocab is None


def test_a_predict_json_of_another_format_exits_2_naming_it(retrieval_run, bench, tmp_path, capsys):
    _, out_dir = retrieval_run
    alone = _alone(out_dir, tmp_path)
    info = json.loads((alone / PREDICT_INFO).read_text())
    (alone / PREDICT_INFO).write_text(json.dumps({**info, "format": 99}))
    code = main(["--model", str(alone), "--video", _video(bench, "video0000"), "--text", "a"])
    assert code == 2 and f"{alone / PREDICT_INFO}: format 99" in capsys.readouterr().err


def test_vqa_top_answers_are_the_models_prediction_with_sigmoid_scores(bench, vqa_run, tmp_path, capsys):
    cfg, out_dir = vqa_run
    model, batch, examples, preds, label2ans = _first_eval_batch(cfg, out_dir, "val")
    images = sorted({str(bench / e["file"]) for e in examples})
    questions = sorted({e["question"] for e in examples})
    argv = ["--model", str(out_dir), *[f"--image={i}" for i in images]]
    code, out, stdout, _ = _predict([*argv, *[f"--question={q}" for q in questions]], tmp_path, capsys)
    assert code == 0 and out["unit"] == "image" and out["images"] == images and "videos" not in out
    assert out["settings"] == {"image_size": cfg.data.image_size} and "sigmoid" in out["prob"]
    results = {(r["image"], r["question"]): r["top_answers"] for r in out["results"]}
    assert len(results) == len(images) * len(questions)
    for example, pred in zip(examples, preds):
        assert results[(str(bench / example["file"]), example["question"])][0]["answer"] == label2ans[pred]
    # the scores are the head's own sigmoids, answer by answer (VQA trains each answer with BCE)
    frames = batch["frames"][:1]  # [1, 1, 1, 3, L, L]
    ids, mask = batch["input_ids"][:1], batch["attention_mask"][:1]
    logits = model(frames, ids, mask)[0, 0, 0]  # [K]
    top = results[(str(bench / examples[0]["file"]), examples[0]["question"])]
    expected = logits.sigmoid().topk(5)
    assert [a["answer"] for a in top] == [label2ans[i] for i in expected.indices.tolist()]
    torch.testing.assert_close(torch.tensor([a["prob"] for a in top]), expected.values)
    assert "score=" in stdout and "predicted VQA accuracy" in stdout


def _pretrain_forward_outputs(cfg, model, images, texts):
    """pretrain_forward's (itm_logits [I, Q, 2], mlm_logits [I, Q, Lt, vocab]) of every (image, text) pair,
    one pair at a time, as pre-training evaluates them; the texts tokenized as predict tokenizes them."""
    from clipbert.predict.inputs import image_frames
    from clipbert.predict.scoring import encode_texts

    predictor = type("P", (), {"tokenizer": TaskData(cfg, model.config, CPU).tokenizer, "device": CPU})()
    predictor.max_text_len = cfg.data.max_text_len["pretrain"]
    ids, mask = encode_texts(predictor, texts, literal=False)  # a pre-trained model's [MASK] is special
    norm = normalization_for(model.config)
    itm, mlm = [], []
    with torch.no_grad():
        for image in images:
            frames = image_frames(image, cfg.data.image_size, norm, CPU)
            for q in range(len(texts)):
                text, text_mask = ids[q][None, None], mask[q][None, None]  # [1, 1, Lt]
                out = model.pretrain_forward(
                    frames, text, text_mask, torch.full_like(text, -100), torch.tensor([1])
                )
                itm.append(out["itm_logits"][0])
                mlm.append(out["mlm_logits"][0])
    shape = (len(images), len(texts))
    return torch.stack(itm).view(*shape, 2), torch.stack(mlm).view(*shape, *mlm[0].shape), ids, predictor


def test_pretrain_scores_are_the_pretraining_heads(bench, pretrain_run, tmp_path, capsys):
    cfg, out_dir = pretrain_run
    model = ClipBert.from_pretrained(out_dir / "model").eval()
    lines = read_jsonl(bench / "annotations" / "pretrain_train.jsonl")
    images = list(dict.fromkeys(str(bench / line["file"]) for line in lines))[:3]
    texts = [lines[0]["caption"], "a small [mask] square", "[MASK] [MASK] at all"]
    argv = ["--model", str(out_dir), *[f"--image={i}" for i in images], *[f"--text={t}" for t in texts]]
    code, out, stdout, _ = _predict([*argv, "--top-k", "3"], tmp_path, capsys)
    assert code == 0 and out["images"] == images and len(out["best_image_per_text"]) == 3
    assert out["texts"][1] == "a small [MASK] square"  # the tokenizer knows [MASK] in capitals only
    itm, mlm, ids, predictor = _pretrain_forward_outputs(cfg, model, images, out["texts"])
    # the matching table: log p(match) of the pre-training ITM head (label 1 = match)
    torch.testing.assert_close(
        torch.tensor(out["scores"]), torch.nn.functional.logsigmoid(itm[..., 1] - itm[..., 0])
    )
    assert "best image per text:" in stdout and out["word_score"] is None
    # the fillers: the MLM head's top tokens at each [MASK], for every image and masked text
    fills = {(f["image"], f["text"]): f["masks"] for f in out["fill_mask"]}
    assert set(fills) == {(i, t) for i in images for t in out["texts"][1:]}
    for v, image in enumerate(images):
        for q in (1, 2):
            positions = (ids[q] == predictor.tokenizer.mask_token_id).nonzero()[:, 0]
            expected = mlm[v, q, positions].softmax(-1).topk(3)  # [masks, 3]
            got = fills[(image, out["texts"][q])]
            assert len(got) == len(positions) == q  # one [MASK] in text 1, two in text 2
            for candidates, indices, probs in zip(got, expected.indices, expected.values):
                assert [c["token"] for c in candidates] == predictor.tokenizer.convert_ids_to_tokens(indices)
                torch.testing.assert_close(torch.tensor([c["prob"] for c in candidates]), probs)
    assert "[MASK] fillers" in stdout


def test_bad_and_non_image_files_are_reported_and_skipped(bench, pretrain_run, tmp_path, capsys):
    _, out_dir = pretrain_run
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(_image(bench, 0), folder / "good.jpg")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(100)))
    (folder / "notes.txt").write_text("not an image")
    argv = [
        "--model",
        str(out_dir),
        "--image",
        str(folder),
        "--image",
        str(tmp_path / "gone.jpg"),
        "--text",
        "a",
    ]
    code, out, stdout, _ = _predict(argv, tmp_path, capsys)
    assert code == 0 and out["images"] == [str(folder / "good.jpg")]
    reasons = {s["image"]: s["reason"] for s in out["skipped"]}
    assert reasons[str(tmp_path / "gone.jpg")] == "missing file"
    assert reasons[str(folder / "corrupt.png")].startswith("undecodable image")
    assert reasons[str(folder / "notes.txt")].startswith("not an image suffix (.jpg")
    assert "skipped 3 input(s), scored 1 image(s):" in stdout
    code = main(["--model", str(out_dir), "--image", str(folder / "corrupt.png"), "--text", "a"])
    assert code == 1 and "no usable image among 1 input(s)" in capsys.readouterr().err


def test_a_vqa_export_holds_its_answers(vqa_run, bench):
    _, out_dir = vqa_run
    info = json.loads((out_dir / "model" / PREDICT_INFO).read_text())
    ans2label = json.loads((bench / "annotations" / "vqa_ans2label.json").read_text())
    assert info["task"]["name"] == "vqa" and info["answers"] == sorted(ans2label, key=ans2label.get)


def test_visual_words_are_checked_against_the_tokenizer(retrieval_run, bench, tmp_path, capsys):
    _, out_dir = retrieval_run
    alone = _alone(out_dir, tmp_path)
    info = json.loads((alone / PREDICT_INFO).read_text())
    words = info["visual_words"]["words"]
    assert len(words) == len(info["visual_words"]["word_ids"]) and "red" in words  # tokens, as trained
    info["visual_words"]["words"] = ["crimson", *words[1:]]  # as if trained with another vocabulary
    (alone / PREDICT_INFO).write_text(json.dumps(info))
    argv = ["--model", str(alone), "--video", _video(bench, "video0000"), "--text", "a"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"visual word id {info['visual_words']['word_ids'][0]} is 'crimson' in training but" in err
    code, out, _, _ = _predict([*argv, "--word-score-weight", "0"], tmp_path, capsys)  # the head alone
    assert code == 0 and out["word_score"] is None


def test_bfloat16_autocast_scores_close_to_float32(retrieval_run, bench, tmp_path, capsys):
    _, out_dir = retrieval_run
    argv = [
        "--model",
        str(out_dir),
        "--video",
        str(bench / "videos" / "video000[0-2].mp4"),
        "--text",
        "a red",
    ]
    _, exact, _, _ = _predict(argv, tmp_path, capsys)
    code, low, stdout, _ = _predict([*argv, "--dtype", "bfloat16"], tmp_path, capsys)
    assert code == 0 and exact["dtype"] == "float32" and low["dtype"] == "bfloat16"
    assert "bfloat16 autocast" in stdout
    torch.testing.assert_close(torch.tensor(low["scores"]), torch.tensor(exact["scores"]), atol=0.05, rtol=0)
    assert low["scores"] != exact["scores"]  # autocast ran: bf16 rounding moved the numbers


def test_special_token_words_in_a_retrieval_text_are_words_as_in_the_datasets(
    retrieval_run, bench, tmp_path, capsys
):
    _, out_dir = retrieval_run
    argv = ["--model", str(out_dir), "--video", _video(bench, "video0000"), "--word-score-weight", "0"]
    texts = ["a red [SEP] circle [MASK]", "a red [ sep ] circle [ mask ]"]  # the tokenizer reads both alike
    code, out, _, _ = _predict([*argv, *[f"--text={t}" for t in texts]], tmp_path, capsys)
    assert code == 0 and out["scores"][0][0] == out["scores"][0][1]


def test_answer_list_checks_the_vocabulary_as_the_datasets_do(tmp_path):
    from clipbert.train.export import answer_list

    (tmp_path / "msrvtt_qa_ans2label.json").write_text(json.dumps({"red": 1, "blue": 0}))
    assert answer_list(tmp_path, "msrvtt_qa", 2) == ["blue", "red"]
    with pytest.raises(ValueError, match="2 answers, but the model's head has 3"):
        answer_list(tmp_path, "msrvtt_qa", 3)
    (tmp_path / "msrvtt_qa_ans2label.json").write_text(json.dumps({"red": 2, "blue": 0}))  # a gap
    with pytest.raises(ValueError, match="labels reach 2"):
        answer_list(tmp_path, "msrvtt_qa", 2)


@pytest.mark.parametrize(
    "scores, chosen, why",
    [
        ([-1.0, -0.5, -2.0], 1, None),
        ([-0.5, -0.5, -2.0], None, "tied"),  # evaluation: NO_PREDICTION, counted wrong
        ([-0.5, float("nan"), -2.0], None, "NaN"),
    ],
)
def test_a_multiple_choice_tie_chooses_no_option_as_the_evaluation_counts_it(
    scores, chosen, why, monkeypatch
):
    # predict marked the first of tied top options as the model's choice, where the evaluation (ties_lose)
    # counts the question wrong: the two disagreed on what the model answers
    from types import SimpleNamespace

    from clipbert.predict import report

    predictor = SimpleNamespace(run=SimpleNamespace(kind="mc"))
    result = SimpleNamespace(videos=["a.mp4"], log_probs=[torch.tensor([scores])])
    options = ["left", "right", "up"]
    monkeypatch.setattr(report, "header", lambda predictor, skipped: {})
    out = report.options_json(predictor, result, "where?", options, [])
    row = out["results"][0]
    assert row["chosen"] == chosen
    assert row["chosen_option"] == (None if chosen is None else options[chosen])
    lines = report.format_options(out)
    assert sum(line.lstrip().startswith("*") for line in lines) == (chosen is not None)
    if why:
        assert why in row["no_choice"] and any("no option chosen" in line for line in lines)
