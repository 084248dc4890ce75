"""Engine pieces: parameter groups, the LR schedule through DeepSpeed, and the task losses vs float64."""

import copy

import pytest
import torch
from test_train_fakes import make_config
from torch import nn

from clipbert.models import ClipBert
from clipbert.train.engine import (
    build_engine,
    deepspeed_config,
    init_distributed,
    param_groups,
    warmup_linear_decay,
)
from clipbert.train.evaluate import summarize
from clipbert.train.tasks import predict, pretrain_eval, training_loss

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    init_distributed(CPU)
    return make_config(
        tmp_path_factory.mktemp("engine"),
        train={"lr": 1e-3, "cnn_lr": 2e-3, "weight_decay": 0.01, "cnn_weight_decay": 0.05},
    )


def test_param_groups_split_cnn_transformer_and_decay(cfg):
    model = ClipBert(cfg.model_config(freeze_at=1))
    groups = {g["group"]: g for g in param_groups(model, cfg.train)}
    assert set(groups) == {"cnn", "cnn_no_decay", "transformer", "transformer_no_decay"}
    assert (groups["cnn"]["lr"], groups["cnn"]["weight_decay"]) == (2e-3, 0.05)
    assert (groups["transformer"]["lr"], groups["transformer"]["weight_decay"]) == (1e-3, 0.01)
    assert (
        groups["cnn_no_decay"]["weight_decay"] == 0.0
        and groups["transformer_no_decay"]["weight_decay"] == 0.0
    )
    assert all(n.startswith("cnn.") for n in groups["cnn"]["names"] + groups["cnn_no_decay"]["names"])
    assert not any(n.startswith("cnn.") for n in groups["transformer"]["names"])
    no_decay = groups["transformer_no_decay"]["names"]
    assert all(n.endswith(".bias") or "LayerNorm" in n or "layer_norm" in n.lower() for n in no_decay)
    assert any("LayerNorm.weight" in n for n in no_decay)
    assert not any(n.endswith(".bias") for n in groups["transformer"]["names"] + groups["cnn"]["names"])
    # frozen stem (freeze_at=1) is left out; every trainable parameter is in exactly one group
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    grouped = [id(p) for g in groups.values() for p in g["params"]]
    assert len(grouped) == len(set(grouped)) == len(trainable) and set(grouped) == trainable
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n not in g["names"] for g in groups.values() for n in frozen)


def test_the_visual_word_heads_learned_scale_gets_no_weight_decay(cfg):
    # its cosine temperature (as CLIP's logit scale) was decayed toward 0 with the transformer's weights
    model = ClipBert(cfg.model_config(visual_words=True))
    groups = {g["group"]: g["names"] for g in param_groups(model, cfg.train)}
    assert "visual_words.scale" in groups["transformer_no_decay"]
    assert not any("visual_words" in n for n in groups["transformer"])


def test_warmup_then_linear_decay_to_zero():
    total, ratio = 20, 0.1  # 2 warm-up steps
    lrs = [warmup_linear_decay(s, total, ratio) for s in range(total)]
    assert lrs[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert lrs[-1] == pytest.approx(1 / 18)
    assert warmup_linear_decay(total, total, ratio) == 0.0
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))


def test_engine_keeps_per_group_lrs_and_schedules_them(cfg):
    model = ClipBert(cfg.model_config())
    engine, optimizer, scheduler = build_engine(cfg, model, total_steps=10, device=CPU)
    lrs = {g["group"]: g["lr"] for g in optimizer.param_groups}
    # step 0 of 10 with 10% warm-up (1 step): multiplier 1/2
    assert lrs["cnn"] == pytest.approx(1e-3) and lrs["transformer"] == pytest.approx(5e-4)
    assert tuple(optimizer.param_groups[0]["betas"]) == (0.9, 0.98)
    assert engine.gradient_clipping() == cfg.train.grad_clip
    # CPU: torch's fused AdamW (one vectorized pass a tensor), not the per-op loop
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is True


def test_deepspeed_section_gets_the_train_settings(cfg):
    ds = deepspeed_config(cfg, CPU)
    assert ds["train_micro_batch_size_per_gpu"] == cfg.train.batch_size
    assert ds["gradient_accumulation_steps"] == cfg.train.grad_accum
    assert ds["optimizer"]["params"]["torch_adam"] is True  # CPU: torch's AdamW, no compiled kernels
    assert ds["optimizer"]["params"]["betas"] == [0.9, 0.98]
    assert ds["optimizer"]["params"]["fused"] is True


@pytest.mark.parametrize(
    "given, fused", [({"foreach": True}, None), ({"fused": False}, False), ({"foreach": False}, True)]
)
def test_a_users_foreach_or_fused_choice_is_kept(cfg, given, fused):
    # torch refuses fused=True beside foreach=True, so a user's foreach turns the default off
    cfg = copy.deepcopy(cfg)
    cfg.deepspeed["optimizer"] = {"type": "AdamW", "params": dict(given)}
    assert deepspeed_config(cfg, CPU)["optimizer"]["params"].get("fused") is fused


class FixedScores(nn.Module):
    """A stand-in model whose score() returns the given per-clip logits [B, M, N, K]."""

    def __init__(self, scores):
        super().__init__()
        self.scores = scores

    def forward(self, frames, input_ids, attention_mask):
        return self.scores


def _lse_nll64(logits, target):
    """float64 reference of paper Eq. 5-6: logits [B, N, K] -> mean NLL of the LSE-aggregated prediction."""
    logp = torch.log_softmax(logits.double().logsumexp(1), -1)
    return -logp[torch.arange(len(target)), target].mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_task_losses_match_float64_references(seed):
    g = torch.Generator().manual_seed(seed)
    b, m, n = 3, 4, 5
    batch = {"frames": None, "input_ids": None, "attention_mask": None}
    # retrieval: [B, M, N, 2], column 0 matches
    scores = torch.randn(b, m, n, 2, generator=g)
    labels = torch.tensor([[1, 0, 0, 0]] * b)
    loss, _ = training_loss(FixedScores(scores), {**batch, "labels": labels}, "retrieval", "lse")
    ref = _lse_nll64(scores.reshape(b * m, n, 2), labels.reshape(-1))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    # multiple choice: [B, M options, N, 1]
    scores = torch.randn(b, m, n, 1, generator=g)
    labels = torch.tensor([2, 0, 3])
    loss, _ = training_loss(FixedScores(scores), {**batch, "labels": labels}, "mc", "lse")
    assert loss.item() == pytest.approx(_lse_nll64(scores[..., 0].transpose(1, 2), labels).item(), rel=1e-5)
    # open-ended QA: [B, 1, N, K]; -100 labels are left out
    scores = torch.randn(b, 1, n, 7, generator=g)
    labels = torch.tensor([6, -100, 1])
    loss, _ = training_loss(FixedScores(scores), {**batch, "labels": labels}, "qa", "lse")
    keep = labels != -100
    assert loss.item() == pytest.approx(_lse_nll64(scores[keep, 0], labels[keep]).item(), rel=1e-5)
    # mean aggregation: log_softmax of the clip-mean logits
    scores = torch.randn(b, 1, n, 7, generator=g)
    labels = torch.tensor([0, 3, 6])
    loss, _ = training_loss(FixedScores(scores), {**batch, "labels": labels}, "qa", "mean")
    ref = -torch.log_softmax(scores[:, 0].double().mean(1), -1)[torch.arange(b), labels].mean()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_qa_batch_without_known_answers_gives_a_zero_loss_in_the_graph():
    scores = torch.randn(2, 1, 3, 4, requires_grad=True)
    batch = {"frames": None, "input_ids": None, "attention_mask": None, "labels": torch.tensor([-100, -100])}
    loss, _ = training_loss(FixedScores(scores), batch, "qa", "lse")
    loss.backward()
    assert loss.item() == 0.0 and scores.grad is not None


def test_msrvtt_mc_prediction_ranks_options_by_match_probability():
    scores = torch.zeros(2, 5, 3, 2)
    scores[0, 3, :, 1] = 4.0  # video 0: option 3 matches best
    scores[1, 1, 0, 1] = 9.0  # video 1: option 1, through a single clip (LSE picks it up)
    batch = {"frames": None, "input_ids": None, "attention_mask": None, "labels": torch.tensor([3, 0])}
    out = predict(FixedScores(scores), batch, "mc_itm", "lse")
    assert out["pred"].tolist() == [3, 1]


def _one_loud_clip(b: int, n: int, k: int) -> torch.Tensor:
    """[B, N, K] logits where clip 0 says class 2 loudly (6) and every other clip says class 1 (4): LSE and
    max predict 2, the mean over the clips predicts 1 (8/3 > 6/3 at N=3)."""
    logits = torch.zeros(b, n, k)
    logits[:, 0, 2] = 6.0
    logits[:, 1:, 1] = 4.0
    return logits


@pytest.mark.parametrize("aggregation, expected", [("lse", 2), ("max", 2), ("mean", 1)])
def test_qa_and_mc_predictions_follow_the_clip_aggregation(aggregation, expected):
    batch = {"frames": None, "input_ids": None, "attention_mask": None, "labels": torch.tensor([2, 1])}
    logits = _one_loud_clip(2, 3, 5)
    qa = predict(FixedScores(logits[:, None]), batch, "qa", aggregation)  # [B, 1, N, K]
    assert qa["pred"].tolist() == [expected] * 2 and qa["label"].tolist() == [2, 1]
    mc = predict(FixedScores(logits.transpose(1, 2)[..., None]), batch, "mc", aggregation)  # [B, M, N, 1]
    assert mc["pred"].tolist() == [expected] * 2


def test_summaries_count_hits_per_task():
    qa = [
        {"pred": 2, "label": 2, "answer_type": "what"},
        {"pred": 1, "label": 2, "answer_type": "what"},
        {"pred": 0, "label": 0, "answer_type": "who"},
        {"pred": 3, "label": -100, "answer_type": "who"},  # outside ans2label: always wrong
    ]
    out = summarize("qa", qa)
    assert out == {"acc": 50.0, "acc_what": 50.0, "acc_who": 50.0, "num_examples": 4}
    mc = [{"pred": p, "label": t} for p, t in [(0, 0), (3, 3), (1, 4)]]
    assert summarize("mc", mc) == {"acc": pytest.approx(200 / 3), "num_examples": 3}
    pretrain = [
        {"itm_pred": 1, "itm_label": 1, "mlm_correct": 3, "mlm_total": 4},
        {"itm_pred": 0, "itm_label": 1, "mlm_correct": 0, "mlm_total": 0},  # nothing masked in this one
        {"itm_pred": 0, "itm_label": 0, "mlm_correct": 2, "mlm_total": 6},
    ]
    out = summarize("pretrain", pretrain)
    assert out == {"mlm_acc": 50.0, "mlm_tokens": 10, "itm_acc": pytest.approx(200 / 3), "num_examples": 3}
    # nothing masked in the whole split: mlm_acc 0 says nothing, and mlm_tokens says so
    assert summarize("pretrain", pretrain[1:2])["mlm_tokens"] == 0


def test_pretrain_eval_counts_masked_tokens_and_matches():
    class FixedHeads(nn.Module):
        def pretrain_forward(self, frames, input_ids, attention_mask, mlm_labels, itm_labels):
            mlm = torch.zeros(2, 3, 5)  # [B, Lt, vocab]: predicts token 4 everywhere
            mlm[..., 4] = 1.0
            return {"mlm_logits": mlm, "itm_logits": torch.tensor([[0.0, 1.0], [2.0, 1.0]])}

    batch = {"frames": None, "input_ids": None, "attention_mask": None}
    batch["mlm_labels"] = torch.tensor([[[4, -100, 1]], [[-100, -100, 4]]])  # [B, 1, Lt]
    batch["itm_labels"] = torch.tensor([1, 1])
    out = pretrain_eval(FixedHeads(), batch)
    assert out["mlm_correct"].tolist() == [1, 1] and out["mlm_total"].tolist() == [2, 1]
    assert out["itm_pred"].tolist() == [1, 0] and out["itm_label"].tolist() == [1, 1]


def test_training_an_evaluation_only_task_fails():
    batch = {"frames": None, "input_ids": None, "attention_mask": None, "labels": torch.tensor([0])}
    with pytest.raises(ValueError, match="msrvtt_mc is evaluated with a retrieval model"):
        training_loss(FixedScores(torch.zeros(1, 5, 1, 2)), batch, "mc_itm", "lse")


def test_cpu_process_group_skips_deepspeeds_inference_shm_build(cfg):
    # The fixture opened the process group on the CPU: DeepSpeed must not have JIT-built (or loaded) its
    # shared-memory inference all-reduce, a 35 s C++ build that training never uses.
    from deepspeed.comm import comm

    assert comm.cdb is not None and comm.cdb.is_initialized()
    assert comm.cdb.shm_comm_op is None


def test_balanced_evaluation_reduces_its_forward_count_on_the_training_device(monkeypatch):
    # ZeRO-3 evaluation all-reduces each rank's forward count; NCCL (every GPU run) reduces only CUDA tensors,
    # so the count must live on the training device. "meta" stands in for the GPU: a CPU tensor is the bug.
    from clipbert.train import evaluate

    class Reduced(Exception):
        pass

    devices = []

    def all_reduce(tensor, op=None):
        devices.append(tensor.device)
        raise Reduced  # a meta tensor has no value to read back

    monkeypatch.setattr(evaluate.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(evaluate.dist, "all_reduce", all_reduce)
    with pytest.raises(Reduced):
        list(evaluate.balanced([{"index": 0}], True, torch.device("meta")))
    assert devices == [torch.device("meta")]


def test_evaluation_reports_each_bad_video_file_once():
    # An eval example whose video is bad is scored with a replacement: the metrics must say so
    # (`bad_videos` in the eval output and one warning naming the files), counting each file once.
    import logging

    from clipbert.train import evaluate
    from clipbert.train.logging import get_logger

    batches = [
        {"index": 0, "bad_videos": ["a.mp4: missing", "b.mp4: truncated"]},
        {"index": 1, "bad_videos": ["a.mp4: missing"]},
        {"index": 2},
    ]
    loader = evaluate._BadVideoLog(batches)
    assert len(loader) == 3
    assert [b for b, real in evaluate.balanced(loader, False, CPU)] == batches
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    get_logger().addHandler(handler)
    try:
        assert evaluate._report_bad_videos(loader.entries, "val") == 2
        assert evaluate._report_bad_videos([], "val") == 0
    finally:
        get_logger().removeHandler(handler)
    assert len(records) == 1 and records[0].levelname == "WARNING"
    message = records[0].getMessage()
    assert "eval val: 2 bad video file(s)" in message and "a.mp4: missing; b.mp4: truncated" in message
    # a file DALI could not decode and PyAV did is scored as usual: not a bad file "scored with a replacement"
    records.clear()
    get_logger().addHandler(handler)
    try:
        routed = ["h.mp4: codec h264 (DALI CPU decodes VP8, VP9, MJPEG); used PyAV", "c.mp4: missing"]
        assert evaluate._report_bad_videos(routed + ["d.mp4: x; used PyAV", "d.mp4: cut"], "val") == 2
    finally:
        get_logger().removeHandler(handler)
    assert [r.levelname for r in records] == ["INFO", "WARNING"]
    assert "1 video file(s) DALI could not decode were decoded by PyAV and scored as usual: h.mp4" in (
        records[0].getMessage()
    )
    assert "2 bad video file(s)" in records[1].getMessage()


def test_retrieval_eval_ranks_a_dropped_video_last_instead_of_stopping():
    # The DALI loader drops a row that neither DALI nor PyAV can decode: that video has no score column.
    # Evaluation must go on, rank it last for its texts and say how many were unscored.
    from types import SimpleNamespace

    from clipbert.train import evaluate

    class Stub:  # video v's tokens are v + 1; a text scores its own video highest (match = -|v + 1 - t|)
        def encode_visual(self, frames):  # [B, N, T, 3, L, L] -> tokens [B, N, 1, 1]
            return SimpleNamespace(tokens=frames[:, :, :1, :1, 0, 0])

        def score(self, visual, ids, mask):  # ids [vb, tb, Lt] -> [vb, tb, N, 2]
            match = -(visual.tokens[:, None, :, 0, 0] - ids[:, :, None, 0].float()).abs()  # [vb, tb, N]
            return torch.stack([torch.zeros_like(match), match], dim=-1)

    videos = 4
    frames = (torch.arange(videos).float() + 1).view(videos, 1, 1, 1, 1, 1).expand(videos, 2, 1, 3, 2, 2)
    loader = [{"index": torch.tensor([i]), "frames": frames[i : i + 1]} for i in (0, 1, 3)]  # video 2 dropped
    data = SimpleNamespace(
        video_ids=[f"v{i}" for i in range(videos)],
        input_ids=torch.tensor([[1], [2], [3], [4]]),  # text t shows video t - 1
        attention_mask=torch.ones(videos, 1, dtype=torch.int64),
        text_to_video=torch.arange(videos),
    )
    cfg = SimpleNamespace(
        eval=SimpleNamespace(word_score_weight=0.0, video_batch=2, text_batch=3),
        task=SimpleNamespace(aggregation="lse"),
    )
    out = evaluate.evaluate_retrieval(Stub(), data, loader, cfg, CPU, torch.float32, balance=False)
    assert out["unscored_videos"] == 1 and out["num_videos"] == videos
    assert out["t2v_r1"] == pytest.approx(75.0)  # texts of videos 0, 1 and 3 find them; video 2's cannot


@pytest.mark.parametrize("weight, r1", [(10.0, 100.0), (0.01, 0.0)])
def test_retrieval_eval_adds_the_weighted_word_score(monkeypatch, weight, r1):
    # eval.word_score_weight: the ranking uses match + weight * word score; the matching head alone is
    # reported beside it. Here the matching head ranks every text's video second and the word score puts
    # it first: a large weight fixes every rank, a tiny one fixes none, and itm_only_* stays the head's.
    from types import SimpleNamespace

    from clipbert.train import evaluate

    class Stub:  # video v's tokens are v + 1; text id i matches the video whose token is i best
        visual_words = object()  # a visual-word head is present

        def encode_visual(self, frames):  # [B, N, T, 3, L, L] -> tokens [B, N, 1, 1]
            return SimpleNamespace(tokens=frames[:, :, :1, :1, 0, 0])

        def score(self, visual, ids, mask):  # ids [vb, tb, Lt] -> [vb, tb, N, 2]
            match = -(visual.tokens[:, None, :, 0, 0] - ids[:, :, None, 0].float()).abs()  # [vb, tb, N]
            return torch.stack([torch.zeros_like(match), match], dim=-1)

    def words_point_at_the_true_video(model, tokens, input_ids, words):  # [Q, V local]: 3 on text q's video
        return 3.0 * (tokens[None, :, 0, 0, 0] == torch.arange(1, len(input_ids) + 1)[:, None].float())

    monkeypatch.setattr(evaluate, "word_log_likelihood", words_point_at_the_true_video)
    videos = 4
    frames = (torch.arange(videos).float() + 1).view(videos, 1, 1, 1, 1, 1).expand(videos, 2, 1, 3, 2, 2)
    loader = [{"index": torch.tensor([i]), "frames": frames[i : i + 1]} for i in range(videos)]
    data = SimpleNamespace(
        video_ids=[f"v{i}" for i in range(videos)],
        input_ids=torch.tensor([[2], [3], [4], [1]]),  # text t's matching head prefers the wrong video
        attention_mask=torch.ones(videos, 1, dtype=torch.int64),
        text_to_video=torch.arange(videos),
    )
    cfg = SimpleNamespace(
        eval=SimpleNamespace(word_score_weight=weight, video_batch=2, text_batch=3),
        task=SimpleNamespace(aggregation="lse"),
    )
    out = evaluate.evaluate_retrieval(Stub(), data, loader, cfg, CPU, torch.float32, False, words=object())
    assert out["itm_only_t2v_r1"] == 0.0
    assert out["t2v_r1"] == r1


def test_evaluation_shows_progress_bars_when_asked(capsys, monkeypatch):
    # a full retrieval evaluation can take minutes: rank 0 shows its videos and its score matrix advance
    from types import SimpleNamespace

    from clipbert import progress
    from clipbert.train import evaluate

    # as on a terminal: in a log file these bars show only once they last a minute (tests/test_log_files.py)
    monkeypatch.setattr(progress, "_is_terminal", lambda stream: True)

    class Stub:
        def encode_visual(self, frames):  # [B, N, T, 3, L, L] -> tokens [B, N, 1, 1]
            return SimpleNamespace(tokens=frames[:, :, :1, :1, 0, 0])

        def score(self, visual, ids, mask):  # -> [vb, tb, N, 2]
            match = -(visual.tokens[:, None, :, 0, 0] - ids[:, :, None, 0].float()).abs()
            return torch.stack([torch.zeros_like(match), match], dim=-1)

    videos = 3
    frames = (torch.arange(videos).float() + 1).view(videos, 1, 1, 1, 1, 1).expand(videos, 2, 1, 3, 2, 2)
    loader = [{"index": torch.tensor([i]), "frames": frames[i : i + 1]} for i in range(videos)]
    data = SimpleNamespace(
        video_ids=[f"v{i}" for i in range(videos)],
        input_ids=torch.tensor([[1], [2], [3]]),
        attention_mask=torch.ones(videos, 1, dtype=torch.int64),
        text_to_video=torch.arange(videos),
    )
    cfg = SimpleNamespace(
        eval=SimpleNamespace(word_score_weight=0.0, video_batch=2, text_batch=2),
        task=SimpleNamespace(aggregation="lse"),
        train=SimpleNamespace(progress_bar=True),
    )
    out = evaluate.evaluate_retrieval(Stub(), data, loader, cfg, CPU, torch.float32, False, split="val")
    err = capsys.readouterr().err
    assert out["t2v_r1"] == 100.0
    assert "eval val: videos" in err and "/3 " in err and "eval val: scores" in err
    cfg.train.progress_bar = False  # train.progress_bar=false: no bar
    evaluate.evaluate_retrieval(Stub(), data, loader, cfg, CPU, torch.float32, False, split="val")
    assert "eval val" not in capsys.readouterr().err
    records = evaluate.evaluate_examples(
        lambda b: {"pred": b["index"]}, loader, CPU, torch.float32, False, "eval x"
    )
    assert [r["pred"] for r in records] == [0, 1, 2] and "eval x" in capsys.readouterr().err


def test_a_closed_process_group_lets_a_later_engine_of_the_process_start(cfg):
    # run.main destroys the group at its end; DeepSpeed kept its clone of the old one, so the next engine of
    # the process (a second run.main, a notebook, the next test module) failed "Group ... is not registered"
    from clipbert.train.engine import close_distributed

    build_engine(cfg, ClipBert(cfg.model_config()), 4, CPU)
    close_distributed()
    init_distributed(CPU)
    engine, _, _ = build_engine(cfg, ClipBert(cfg.model_config()), 4, CPU)
    assert engine is not None
