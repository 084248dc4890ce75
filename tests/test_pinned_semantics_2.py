"""Exact, hand-worked values for more pieces whose silent breakage would corrupt results (round 2 of
tests/test_pinned_semantics.py): each test pins one behaviour that a plausible wrong edit (an off-by-one, a
dropped term, a `<` for a `<=`) would change without failing the tests elsewhere."""

import json

import numpy as np
import pytest
import torch

from clipbert.train import best
from clipbert.train import config as C
from clipbert.train.engine import warmup_linear_decay

# ---- LR schedule ----------------------------------------------------------------------------------------


def test_warmup_steps_are_the_floor_of_ratio_times_steps():
    # docs/TRAINING.md: W = int(warmup_ratio x steps). 17 steps at 10%: 1.7 -> W = 1 (rounding would give 2):
    # step 0 runs at (0 + 1) / (1 + 1) of the base LR, step 1 at the peak, (17 - 1) / (17 - 1)
    assert [warmup_linear_decay(s, 17, 0.1) for s in range(3)] == pytest.approx([1 / 2, 1.0, 15 / 16])


# ---- best-model selection -------------------------------------------------------------------------------


def test_a_tied_rank_metric_keeps_the_earlier_best():
    # lower is better for median and mean ranks; a tie is no improvement, as for higher-is-better metrics
    record = {"metric": "t2v_medr", "value": 3.0, "step": 10}
    assert not best.beats(3.0, record, "t2v_medr")
    assert best.beats(2.0, record, "t2v_medr") and not best.beats(4.0, record, "t2v_medr")


def test_a_best_recorded_on_another_metric_is_not_compared():
    # a resume with another eval.best_metric: the old record's value (an rsum of 250) says nothing of R@1
    assert best.beats(5.0, {"metric": "rsum", "value": 250.0, "step": 10}, "t2v_r1")
    assert best.beats(5.0, {}, "t2v_r1")


@pytest.mark.parametrize(
    "kind, metric",
    [("retrieval", "rsum"), ("qa", "acc"), ("mc", "acc"), ("vqa", "vqa_acc"), ("pretrain", None)],
)
def test_auto_selects_the_documented_metric_of_each_task_kind(kind, metric):
    # docs/TRAINING.md: rsum for retrieval, acc for QA and multiple choice, vqa_acc for VQA, none for
    # pre-training
    from types import SimpleNamespace

    cfg = SimpleNamespace(
        eval=SimpleNamespace(best_metric="auto"), task=SimpleNamespace(kind=kind, name=kind)
    )
    assert best.selection_metric(cfg) == metric


# ---- config validation and --set ------------------------------------------------------------------------


def test_set_keeps_every_equals_sign_after_the_first_in_the_value():
    raw = {}
    C.apply_override(raw, "data.video_dir=/data/run=3/videos")
    assert raw == {"data": {"video_dir": "/data/run=3/videos"}}


def test_set_of_a_whole_section_is_refused():
    # `--set train=3` would replace the section by a number
    with pytest.raises(C.ConfigError, match=r"--set key 'train' must start with a section"):
        C.apply_override({}, "train=3")


def test_train_lr_of_zero_is_allowed():
    # a frozen part: only eps is open at 0 (built directly: a whole load imports DeepSpeed to check it)
    assert C.TrainConfig(lr=0, cnn_lr=0).cnn_lr == 0


# ---- when the trainer evaluates -------------------------------------------------------------------------


@pytest.mark.usefixtures("cpu_world")
def test_validation_runs_after_every_eval_every_th_step(tmp_path):
    # 8 examples, batch 2: 4 optimizer steps; eval_every 2 -> val after steps 2 and 4 (not 1 and 3)
    from test_train_fakes import fake_factory, make_config

    from clipbert.train.run import run

    train = {"epochs": 1, "eval_every": 2, "save_every": 0}
    run(
        make_config(tmp_path, train=train, eval={"final_eval": False}),
        torch.device("cpu"),
        fake_factory(),
    )
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "val"] == [2, 4]


@pytest.mark.usefixtures("cpu_world")
def test_no_checkpoint_is_written_after_a_step_whose_last_loss_was_not_finite(tmp_path):
    # save_every 1: epoch 0 saves steps 1-4; every loss of epoch 1 is NaN, so step 5 ends without an update
    # and must not replace "latest" (a resume would start from a state after a bad step); step 6 diverges
    from test_train_fakes import fake_factory, make_config

    from clipbert.train import checkpoint as ckpt
    from clipbert.train.loop import TrainingDiverged
    from clipbert.train.run import run

    train = {"epochs": 3, "max_bad_steps": 2, "save_every": 1, "eval_every": -1}
    with pytest.raises(TrainingDiverged):
        run(make_config(tmp_path, train=train), torch.device("cpu"), fake_factory(nan_epoch=1))
    root = ckpt.checkpoint_root(tmp_path)
    assert (root / "latest").read_text().strip() == ckpt.tag_for(4)
    assert not (root / ckpt.tag_for(5)).exists()


# ---- bad-input summaries --------------------------------------------------------------------------------


def test_a_summary_names_five_files_sorted_then_counts_the_rest():
    from clipbert.data.bad_input import _named

    assert _named(["e", "c", "a", "d", "b"]) == "a, b, c, d, e"  # exactly five: no "and 0 more"
    assert _named(["g", "f", "e", "c", "a", "d", "b"]) == "a, b, c, d, e and 2 more"


# ---- retrieval evaluation: combined score, unscored videos ---------------------------------------------


def test_retrieval_adds_the_weighted_word_score_and_ranks_an_unscored_video_last(
    monkeypatch,
):
    # 2 texts (of videos 0 and 1), 3 videos; this rank scored videos 0 and 1, video 2 was dropped by the
    # loader. log p(match) [Q, V]: text 0 -> [-2, -1], text 1 -> [-1, -3]; word scores: [0, -3], [-3, 0].
    # eval.word_score_weight 0.5: text 0 -> [-2, -2.5] (rank 1), text 1 -> [-2.5, -3] (rank 2): mean 1.5
    # (weight 1 would give ranks 1 and 1). The matching head alone ranks both texts' videos 2nd. Video 2
    # scores -inf and ranks last (a score of 0, the best log-prob, would rank it first for every text).
    from types import SimpleNamespace

    from clipbert.train import evaluate as E

    itm = torch.tensor([[-2.0, -1.0], [-1.0, -3.0]])
    word = torch.tensor([[0.0, -3.0], [-3.0, 0.0]])
    monkeypatch.setattr(E, "_visual_tokens", lambda *args, **kwargs: ([0, 1], torch.zeros(2, 1)))
    monkeypatch.setattr(E, "retrieval_scores", lambda *args, **kwargs: itm)
    monkeypatch.setattr(E, "word_log_likelihood", lambda *args, **kwargs: word)
    cfg = SimpleNamespace(
        train=SimpleNamespace(progress_bar=False),
        eval=SimpleNamespace(word_score_weight=0.5, video_batch=8, text_batch=8),
        task=SimpleNamespace(aggregation="lse"),
    )
    data = SimpleNamespace(
        text_to_video=torch.tensor([0, 1]),
        input_ids=torch.zeros(2, 3, dtype=torch.long),
        attention_mask=torch.ones(2, 3, dtype=torch.long),
        video_ids=["v0", "v1", "v2"],
    )
    model = SimpleNamespace(visual_words=object())
    words = SimpleNamespace()
    out = E.evaluate_retrieval(model, data, None, cfg, torch.device("cpu"), torch.float32, False, words)
    assert out["t2v_meanr"] == pytest.approx(1.5)
    assert out["itm_only_t2v_medr"] == pytest.approx(2.0)
    assert out["unscored_videos"] == 1 and out["num_videos"] == 3


# ---- VQA predictions ------------------------------------------------------------------------------------


def test_a_vqa_row_with_nan_scores_scores_zero_whatever_argmax_picks():
    # K = 3 answers. Row 0 diverged (all NaN): argmax takes NaN as the maximum and picks answer 0, which is
    # this question's answer with soft score 1.0, yet it must score 0. Row 1 picks answer 1 (logit 2): 0.6.
    from clipbert.train.tasks import predict

    scores = torch.tensor([[float("nan")] * 3, [0.0, 2.0, 1.0]]).view(2, 1, 1, 3)
    batch = {
        "frames": None,
        "input_ids": None,
        "attention_mask": None,
        "answer_labels": torch.tensor([[0, -100], [1, 2]]),
        "answer_scores": torch.tensor([[1.0, 0.0], [0.6, 0.3]]),
        "answered": torch.tensor([True, True]),
    }
    out = predict(lambda frames, ids, mask: scores, batch, "vqa", "lse")
    assert out["score"].tolist() == pytest.approx([0.0, 0.6])
    assert out["pred"][1].item() == 1


# ---- video files and images -----------------------------------------------------------------------------


def _source(video_dir, **values):
    from clipbert.data.config import DataConfig
    from clipbert.data.preprocess import IMAGENET_RGB
    from clipbert.data.video_source import VideoSource

    return VideoSource(
        DataConfig(video_dir=str(video_dir), image_size=16, **values),
        IMAGENET_RGB,
        False,
    )


def test_video_suffixes_match_in_any_case(tmp_path):
    from clipbert.data.video_source import files_by_id

    for name in ("a.MP4", "b.Mkv", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    assert files_by_id(tmp_path) == {
        "a": [str(tmp_path / "a.MP4")],
        "b": [str(tmp_path / "b.Mkv")],
    }


def test_two_files_for_one_video_id_are_refused_not_guessed(tmp_path):
    from clipbert.data.decoders import VideoDecodeError

    for name in ("clip.mp4", "clip.webm", "other.mp4"):
        (tmp_path / name).write_bytes(b"")
    source = _source(tmp_path)
    assert source.key("other") == str(tmp_path / "other.mp4")
    with pytest.raises(VideoDecodeError, match="ambiguous video id 'clip'"):
        source.key("clip")


def test_a_video_id_in_another_unicode_form_is_not_missing(tmp_path):
    # the file is named composed (NFC), the annotation writes the id decomposed (NFD): the same video
    import unicodedata

    (tmp_path / (unicodedata.normalize("NFC", "caf\u00e9") + ".mp4")).write_bytes(b"")
    nfd = unicodedata.normalize("NFD", "caf\u00e9")
    assert _source(tmp_path).missing({nfd, "gone"}) == ["gone"]


def test_middle_sampling_takes_one_clip_whatever_num_test_clips(tmp_path, monkeypatch):
    # 100 frames at 10 fps, 1 s clips, 2 frames each: one clip, from (100 - 10) // 2 = 45, whose frames are
    # round(linspace(45, 54, 2)) = 45 and 54 (not num_test_clips = 4 clips)
    from clipbert.data.decoders import VideoInfo

    source = _source(
        tmp_path,
        test_sampling="middle",
        num_test_clips=4,
        frames_per_clip=2,
        clip_seconds=1.0,
    )
    monkeypatch.setattr(source, "info", lambda video_id: VideoInfo(num_frames=100, fps=10.0))
    assert source.indices("any", epoch=0).tolist() == [[45, 54]]


def test_16_bit_image_values_round_to_the_nearest_8_bit_value(tmp_path):
    # v * 255 / 65535 = v / 257 rounded: 128 -> 0.498 -> 0, 129 -> 0.502 -> 1, 200 -> 1, 65535 -> 255
    # (truncating, v // 257, would give 0 for 129 and 200)
    from test_data_images import H, L, W, _content, _png16

    from clipbert.data.video_source import load_image

    rgb16 = np.zeros((H, W, 3), dtype=np.uint16)
    rgb16[0, :4, 0] = [128, 129, 200, 65535]
    _png16(tmp_path / "deep.png", rgb16)
    assert _content(*load_image(tmp_path / "deep.png", L))[0, :4, 0].tolist() == [
        0,
        1,
        1,
        255,
    ]


# ---- weight name mapping --------------------------------------------------------------------------------


def test_caffe2_batchnorm_running_statistics_keep_their_roles():
    from clipbert.models.weights import caffe2_to_detectron2, detectron2_to_torchvision

    mean, var = (
        caffe2_to_detectron2("res3_1_branch2b_bn_rm"),
        caffe2_to_detectron2("res3_1_branch2b_bn_riv"),
    )
    assert (mean, var) == (
        "res3.1.conv2.norm.running_mean",
        "res3.1.conv2.norm.running_var",
    )
    assert detectron2_to_torchvision(var) == "layer2.1.bn2.running_var"


def test_legacy_layer_norm_gamma_is_the_weight_and_beta_the_bias():
    from clipbert.models.weights import convert_original_key

    old = "module.transformer.bert.encoder.layer.0.output.LayerNorm."
    assert convert_original_key(old + "gamma") == "encoder.layer.0.output.LayerNorm.weight"
    assert convert_original_key(old + "beta") == "encoder.layer.0.output.LayerNorm.bias"


def test_a_wrapper_prefix_is_stripped_only_when_every_key_has_it():
    from clipbert.models.weights import WRAPPER_PREFIXES, _strip_prefix

    t = torch.zeros(1)
    # a network whose own first module is named "model" beside others: nothing is a wrapper's prefix
    assert set(_strip_prefix({"model.conv.weight": t, "head.weight": t}, *WRAPPER_PREFIXES)) == {
        "model.conv.weight",
        "head.weight",
    }
    # DDP around a Lightning module: both prefixes go, repeatedly
    assert set(_strip_prefix({"module.model.a": t, "module.model.b": t}, *WRAPPER_PREFIXES)) == {"a", "b"}


def test_the_frame_cache_evicts_the_least_recently_used_clip(tmp_path, monkeypatch):
    # data.frame_cache_size 2: a, b, a (a is now the most recent), c evicts b; a is still cached, b decodes
    source = _source(tmp_path, frame_cache_size=2)
    decoded = []

    def decode(key, indices):
        decoded.append(key)
        return torch.zeros(*indices.shape, 4, 4, 3, dtype=torch.uint8)  # [N, T, H, W, 3]

    monkeypatch.setattr(source, "key", lambda video_id: video_id)
    monkeypatch.setattr(source.decoder, "decode", decode)
    for video in "abacab":
        source.frames(video, np.zeros((1, 1), dtype=np.int64))
    assert decoded == ["a", "b", "c", "b"]
