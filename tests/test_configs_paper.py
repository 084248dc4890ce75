"""The shipped paper configs against the paper (Lei et al., CVPR 2021) and the task definitions of
clipbert/train/tasks.py against its equations. Where the paper gives no value, the original release's
(jayleicn/ClipBERT, src/configs/*.json, src/optimization) is the reference, and the comment says so."""

import json

import pytest
import torch
import torch.nn.functional as F

from clipbert.data.datasets import group_texts
from clipbert.train import config as C
from clipbert.train import tasks
from clipbert.train.engine import warmup_linear_decay

# name -> task, Ntrain x T, L, Ntest, clip seconds, epochs, batch x accum, lr (transformer = CNN)
PAPER = {
    # Table 7a (8x2), Table 10 (20 epochs, 16x1x8, 5e-5); Sec. 4.4: 1-second clips, L=448, Ntest=16
    "ds_msrvtt": ("msrvtt_ret", (8, 2), 448, 16, 1.0, 20, (16, 1), 5e-5),
    # Table 7b (8x2), Table 10 (20 epochs, 8x4x8, 5e-5)
    "ds_didemo": ("didemo_ret", (8, 2), 448, 16, 1.0, 20, (8, 4), 5e-5),
    # Table 7c (4x2*, * = 2-second clips), Table 10 (80 epochs, 16x2x8, 5e-5)
    "ds_anet": ("anet_ret", (4, 2), 448, 16, 2.0, 80, (16, 2), 5e-5),
    # Table 8a (1x1), Table 11 (55 / 15 / 15 epochs, 32x1x8, 1e-4)
    "ds_tgif_action": ("tgif_action", (1, 1), 448, 16, 1.0, 55, (32, 1), 1e-4),
    "ds_tgif_transition": ("tgif_transition", (1, 1), 448, 16, 1.0, 15, (32, 1), 1e-4),
    "ds_tgif_frameqa": ("tgif_frameqa", (1, 1), 448, 16, 1.0, 15, (32, 1), 1e-4),
    # Table 8b (8x2), Table 11 (10 epochs, 16x1x4, 5e-5)
    "ds_msrvtt_qa": ("msrvtt_qa", (8, 2), 448, 16, 1.0, 10, (16, 1), 5e-5),
    # Table 8c (8x2): Appendix B, the MSRVTT retrieval model ranks the five captions (evaluation only)
    "ds_msrvtt_mc": ("msrvtt_mc", (8, 2), 448, 16, 1.0, None, None, None),
    # Sec. 3 implementation details: L=768, 40 epochs, 32 per GPU x 8, 5e-5; images are one 1-frame clip.
    # Accumulation: the paper is silent, the original's step holds 4x 32 captions (test_configs_original.py)
    "ds_pretrain": ("pretrain", (1, 1), 768, 1, 1.0, 40, (32, 4), 5e-5),
    # Appendix A: 13 epochs, batch 32, 5e-5, from the pre-trained weights; Sec. 3: downstream L=448.
    # Accumulation: the paper is silent, the original's step holds 2x 32 questions (test_configs_original.py)
    "ds_vqa": ("vqa", (1, 1), 448, 1, 1.0, 13, (32, 2), 5e-5),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_each_paper_config_has_the_papers_values(name):
    task, (ntrain, t), size, ntest, seconds, epochs, batch, lr = PAPER[name]
    cfg = C.load(name)
    d = cfg.data
    assert cfg.task.name == task
    assert (d.num_clips, d.frames_per_clip, d.image_size, d.num_test_clips) == (ntrain, t, size, ntest)
    assert d.clip_seconds == seconds
    assert (d.train_sampling, d.test_sampling) == ("rand", "uniform")  # Sec. 3: sparse random / uniform
    if epochs is not None:
        assert (cfg.train.epochs, (cfg.train.batch_size, cfg.train.grad_accum)) == (epochs, batch)
        assert cfg.train.lr == cfg.train.cnn_lr == lr  # one rate for the whole model (the original's too)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_each_paper_config_has_the_papers_optimizer_and_model(name):
    cfg = C.load(name)
    t = cfg.train
    # Sec. 3: AdamW, beta1 0.9, beta2 0.98, warm-up over the first 10% of the steps, linear decay to 0
    assert C.check_deepspeed(cfg.deepspeed) is None and cfg.deepspeed["optimizer"]["type"] == "AdamW"
    assert (t.betas, t.warmup_ratio) == ([0.9, 0.98], 0.1)
    # Sec. 4.4: LogSumExp aggregates the clip scores (Appendix B, Eq. 5)
    assert cfg.task.aggregation == "lse"
    # the paper is silent; the original's: weight decay 1e-3 (both parts), the HF AdamW's eps, and its grad
    # norm (5; 2 for VQA) over its summed accumulated gradients, / its accumulation for our mean (the why:
    # test_configs_original.py)
    clip = {"ds_vqa": 2.0, "ds_didemo": 5 / 4, "ds_anet": 5 / 2, "ds_pretrain": 5 / 2}.get(name, 5.0)
    assert (t.weight_decay, t.cnn_weight_decay, t.grad_clip, t.eps) == (1e-3, 1e-3, clip, 1e-6)
    # Sec. 3: ResNet-50 (grid-feat, detectron2 style) + 12-layer BERT-base; dropout 0.1 (original)
    m = cfg.model_config(num_answers=3) if cfg.task.kind in C.ANSWER_KINDS else cfg.model_config()
    assert (m.backbone_style, m.backbone_layers) == ("msra", (3, 4, 6, 3))
    assert (m.num_layers, m.hidden_size, m.num_heads, m.intermediate_size) == (12, 768, 12, 3072)
    assert (m.hidden_dropout, m.attention_dropout, m.temporal_fusion) == (0.1, 0.1, "mean")
    # Sec. 3: mixed precision
    assert C.precision(cfg.deepspeed) in ("bf16", "fp16")


def test_the_visual_tokens_and_the_pretraining_text_follow_section_3():
    pre = C.load("ds_pretrain")
    m = pre.model_config()
    assert m.grid_size**2 == 144  # "the resulting feature map ... contains 144 pixels" at L=768
    assert m.pixel_random_sampling_size == 100  # Pixel-BERT sampling of 100 of them, pre-training only
    assert pre.data.max_text_len["pretrain"] == 20 + 2  # "at most 20 tokens", plus [CLS] and [SEP]
    assert (pre.data.mlm_prob, pre.data.itm_neg_prob) == (0.15, 0.5)
    assert (m.head, m.pretrain_heads) == ("itm", True)  # MLM + ITM
    for name in sorted(set(PAPER) - {"ds_pretrain"}):  # "always use the full feature map" downstream
        cfg = C.load(name)
        extra = {"num_answers": 3} if cfg.task.kind in C.ANSWER_KINDS else {}
        assert cfg.model_config(**extra).pixel_random_sampling_size == 0, name


def test_downstream_configs_start_from_the_pretrained_model_where_they_say_so():
    # Appendix A: VQA is fine-tuned from the image-text pre-trained weights
    assert C.load("ds_vqa").train.init_checkpoint == C.load("ds_pretrain").train.output_dir + "/model"


def test_msrvtt_mc_evaluates_the_msrvtt_retrieval_model_as_it_was_trained():
    mc, ret = C.load("ds_msrvtt_mc"), C.load("ds_msrvtt")
    assert mc.eval.only and mc.eval.checkpoint == ret.train.output_dir + "/model"
    assert (mc.task.kind, mc.model_config().head) == ("mc_itm", "itm")
    assert mc.model_config().weight_key_differences(ret.model_config().to_dict()) == []
    keys = ("image_size", "num_clips", "frames_per_clip", "num_test_clips", "clip_seconds", "test_sampling")
    assert {k: getattr(mc.data, k) for k in keys} == {k: getattr(ret.data, k) for k in keys}
    assert mc.data.max_text_len["msrvtt_mc"] == ret.data.max_text_len["msrvtt_ret"]  # the same captions


def test_the_schedule_warms_up_over_ten_percent_then_decays_linearly_to_zero():
    total = 100
    lrs = [warmup_linear_decay(step, total, 0.1) for step in range(total + 1)]
    assert lrs[:10] == sorted(lrs[:10]) and lrs[9] < 1.0 and lrs[10] == 1.0
    assert lrs[10:] == sorted(lrs[10:], reverse=True) and lrs[total] == 0.0


# --- task definitions (clipbert/train/tasks.py) ---


class _Scores:
    """A model that returns fixed clip scores [B, M, N, K]."""

    def __init__(self, scores):
        self.scores = scores

    def __call__(self, frames, input_ids, attention_mask):
        return self.scores


def _lse_prob(logits):
    """Appendix B, Eq. 5: p = sum_i exp(g_i) / sum(sum_i exp(g_i)) over the N clips; logits [B, N, K]."""
    summed = logits.double().exp().sum(1)
    return summed / summed.sum(-1, keepdim=True)


def test_retrieval_is_two_way_matching_with_the_lse_loss_of_eq_5_and_6():
    scores = torch.randn(3, 2, 4, 2)  # 3 videos x (positive, negative) x 4 clips x (no match, match)
    labels = torch.tensor([[1, 0]] * 3)
    loss, _ = tasks.training_loss(
        _Scores(scores),
        {"frames": 0, "input_ids": 0, "attention_mask": 0, "labels": labels},
        "retrieval",
        "lse",
    )
    p = _lse_prob(scores.reshape(6, 4, 2))
    expected = -p[torch.arange(6), labels.reshape(6)].log().mean()  # Eq. 6
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode, pool", [("mean", lambda x: x.mean(1)), ("max", lambda x: x.amax(1))])
def test_mean_and_max_pool_the_logits_before_the_softmax(mode, pool):
    # Sec. 4.2: "In mean pooling and max pooling, the cross-clip pooling is performed over logits, followed
    # by a softmax operator."
    logits = torch.randn(5, 3, 7)
    torch.testing.assert_close(tasks.clip_aggregate(logits, mode), pool(logits).log_softmax(-1))


def test_tgif_multiple_choice_scores_its_five_options_as_one_softmax():
    # Sec. 4.1 / Appendix B: Action and Transition have 5 candidates; g has one logit per candidate
    scores = torch.randn(2, 5, 3, 1)  # 2 questions x 5 options x 3 clips x 1 logit
    labels = torch.tensor([4, 1])
    batch = {"frames": 0, "input_ids": 0, "attention_mask": 0, "labels": labels}
    loss, _ = tasks.training_loss(_Scores(scores), batch, "mc", "lse")
    p = _lse_prob(scores[..., 0].transpose(1, 2))  # [2, 5] over the options
    torch.testing.assert_close(loss.double(), -p[torch.arange(2), labels].log().mean(), rtol=1e-5, atol=1e-6)
    pred = tasks.predict(_Scores(scores), batch, "mc", "lse")["pred"]
    assert pred.tolist() == p.argmax(-1).tolist()


def test_open_ended_qa_is_a_classifier_over_the_answer_vocabulary():
    scores = torch.randn(3, 1, 2, 11)  # 3 questions x 1 text x 2 clips x 11 answers
    labels = torch.tensor([0, 10, 5])
    batch = {"frames": 0, "input_ids": 0, "attention_mask": 0, "labels": labels}
    loss, _ = tasks.training_loss(_Scores(scores), batch, "qa", "lse")
    p = _lse_prob(scores[:, 0])
    torch.testing.assert_close(loss.double(), -p[torch.arange(3), labels].log().mean(), rtol=1e-5, atol=1e-6)
    assert tasks.predict(_Scores(scores), batch, "qa", "lse")["pred"].tolist() == p.argmax(-1).tolist()


def test_msrvtt_mc_ranks_the_five_captions_by_the_retrieval_models_match_probability():
    # Appendix B: "we directly use the trained retrieval model to rank the five candidate answers"
    scores = torch.randn(4, 5, 3, 2)  # 4 videos x 5 captions x 3 clips x (no match, match)
    batch = {"frames": 0, "input_ids": 0, "attention_mask": 0, "labels": torch.zeros(4, dtype=torch.long)}
    pred = tasks.predict(_Scores(scores), batch, "mc_itm", "lse")["pred"]
    p_match = _lse_prob(scores.reshape(20, 3, 2))[:, 1].view(4, 5)
    assert pred.tolist() == p_match.argmax(-1).tolist()


def test_vqa_is_binary_cross_entropy_over_soft_scores_as_in_the_original():
    # the original: BCE-with-logits, mean over questions and answers, times the number of answers
    scores = torch.randn(2, 1, 1, 6)
    labels = torch.tensor([[1, 4, -100], [0, -100, -100]])  # padded with -100
    soft = torch.tensor([[1.0, 0.3, 0.0], [0.6, 0.0, 0.0]])
    target = torch.zeros(2, 6)
    target[0, 1], target[0, 4], target[1, 0] = 1.0, 0.3, 0.6
    expected = F.binary_cross_entropy_with_logits(scores[:, 0, 0], target) * 6
    torch.testing.assert_close(tasks.vqa_loss(scores, labels, soft), expected)


@pytest.mark.parametrize("task", ["didemo_ret", "anet_ret"])
def test_paragraph_retrieval_concatenates_a_videos_sentences(task):
    # Sec. 4.1: "all sentence descriptions for a video are concatenated to form a paragraph"
    examples = [{"clip_name": "v1", "sentences": ["A man walks in.", " He sits down. "]}]
    assert group_texts(task, examples) == [("v1", ["A man walks in. He sits down."])]


# --- config errors that used to be tracebacks or silent (clipbert/train/config.py) ---


def _raw(name="ds_synthetic"):
    return json.loads((C.CONFIG_DIR / f"{name}.json").read_text())


@pytest.mark.parametrize("value", ["false", "False", "auto"])
def test_a_precision_flag_that_is_not_a_json_bool_is_refused(value):
    # DeepSpeed reads these strings as false (fp32); the trainer took them as true (bf16 frames, bf16 logs)
    raw = _raw()
    raw["deepspeed"]["bf16"] = {"enabled": value}
    with pytest.raises(C.ConfigError, match=r"deepspeed\.bf16\.enabled must be true or false"):
        C.from_dict(raw)


def test_a_python_spelt_precision_flag_on_the_command_line_is_refused():
    # `--set ...=False` is not JSON, so it arrives as the string "False"
    with pytest.raises(C.ConfigError, match=r"deepspeed\.bf16\.enabled must be true or false.*'False'"):
        C.load("ds_msrvtt", ["deepspeed.bf16.enabled=False"])
    assert C.precision(C.load("ds_msrvtt", ["deepspeed.bf16.enabled=false"]).deepspeed) == "fp32"


@pytest.mark.parametrize(
    "section, value",
    [("deepspeed", "ds_config.json"), ("eval", None), ("task", "msrvtt_ret"), ("train", [1]), ("data", 3)],
)
def test_a_section_that_is_not_an_object_is_named(section, value):
    raw = _raw()
    raw[section] = value
    with pytest.raises(C.ConfigError, match=rf"^{section} must be a JSON object"):
        C.from_dict(raw)
    with pytest.raises(C.ConfigError, match=rf"--set {section}\.x: {section} is not an object"):
        C.apply_override(raw, f"{section}.x=1")


def test_a_config_that_is_not_an_object_or_a_preset_that_is_not_a_name_is_named(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(C.ConfigError, match="a config is a JSON object of sections"):
        C.load(path, ["train.lr=1e-4"])
    with pytest.raises(C.ConfigError, match=r"model\.preset must be a preset name"):
        C.load("ds_synthetic", ['model.preset=["base"]'])


def test_eval_checkpoint_without_eval_only_is_refused_not_ignored():
    # it was ignored: the run trained from scratch instead of evaluating the checkpoint
    with pytest.raises(
        C.ConfigError, match=r"eval\.checkpoint='outputs/x' is read only with eval\.only=true"
    ):
        C.load("ds_msrvtt", ["eval.checkpoint=outputs/x"])
    with pytest.raises(C.ConfigError, match=r"eval\.checkpoint=.*eval\.only=true"):
        C.load("ds_msrvtt_mc", ["eval.only=false"])
    assert C.load("ds_msrvtt", ["eval.checkpoint=outputs/x", "eval.only=true"]).eval.only
