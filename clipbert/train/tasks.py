"""Per-task forward passes: the training loss and the evaluation predictions of every task kind.

Clip scores come from `model.score` as [B, M, N, K] (M texts per video, N clips); they are aggregated
over the N clips with the task's function G (paper Eq. 5: LogSumExp) through clipbert.ops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clipbert.train.logging import warn_once

try:  # the fused ops (issue 2); the pure-PyTorch formulas below are the same math
    from clipbert.ops import clip_aggregate as _ops_clip_aggregate
    from clipbert.ops import lse_aggregate_nll as _ops_lse_aggregate_nll
except ImportError:  # pragma: no cover - only while the ops package is absent
    _ops_clip_aggregate = _ops_lse_aggregate_nll = None

TENSOR_KEYS = (
    "frames",
    "input_ids",
    "attention_mask",
    "labels",
    "mlm_labels",
    "itm_labels",
    "index",
    "word_targets",
    "answer_labels",
    "answer_scores",
    "answered",
)
FLOAT_INPUTS = ("frames",)  # take the compute dtype; other float tensors (VQA answer scores) stay float32


@dataclass
class VisualWords:
    """train.visual_word_loss on a device: the candidate words and their base-rate log-odds."""

    word_ids: torch.Tensor  # int64 [W]
    prior: torch.Tensor  # float32 [W]
    weight: float

    @classmethod
    def from_vocab(cls, vocab, weight: float, device) -> VisualWords:
        return cls(
            torch.as_tensor(vocab.word_ids, device=device),
            torch.as_tensor(vocab.prior, device=device),
            float(weight),
        )

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean BCE of logits [B, W] (plus the prior) against the multi-hot caption words [B, W]."""
        return F.binary_cross_entropy_with_logits(logits + self.prior, targets.float())


def clip_aggregate(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """logits [B, N, K] -> float32 log-probs [B, K], aggregated over the N clips."""
    if _ops_clip_aggregate is not None:
        return _ops_clip_aggregate(logits, mode=mode)
    warn_once("clipbert.ops is not importable; aggregating clip scores with plain PyTorch")
    x = logits.float()
    fused = {"lse": lambda: x.logsumexp(1), "mean": lambda: x.mean(1), "max": lambda: x.amax(1)}[mode]()
    return F.log_softmax(fused, dim=-1)


def match_log_prob(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """Matching scores [B, N, 2] -> log p(match) [B] of the clip-aggregated prediction, for ranking.

    Why not clip_aggregate(...)[:, 1]: that log-prob is lse(match) - lse(all), a difference of two nearly
    equal numbers once the model is confident, and rounds to exactly 0.0 in float32 from a margin of about
    17. Every confident candidate then ties, and the tie rule ranks the true video below a worse one (a
    multiple-choice argmax takes option 0). With two classes log p(match) = logsigmoid(log-odds), and the
    log-odds (the difference of the two log-probs) keep their precision: 30 gives -9.4e-14, not 0."""
    agg = clip_aggregate(logits, mode)
    return F.logsigmoid(agg[:, 1] - agg[:, 0])


def aggregate_nll(logits: torch.Tensor, target: torch.Tensor, mode: str) -> torch.Tensor:
    """Mean NLL of the clip-aggregated prediction; logits [B, N, K], target [B] int64."""
    if mode == "lse" and _ops_lse_aggregate_nll is not None:
        return _ops_lse_aggregate_nll(logits, target)
    return F.nll_loss(clip_aggregate(logits, mode), target)


def matching_nll(scores: torch.Tensor, labels: torch.Tensor, aggregation: str) -> torch.Tensor:
    """2-way matching of every (video, caption) pair: scores [B, M, N, 2], labels [B, M] (column 0 true)."""
    b, m, n, k = scores.shape
    return aggregate_nll(scores.reshape(b * m, n, k), labels.reshape(b * m), aggregation)


def vqa_logits(scores: torch.Tensor) -> torch.Tensor:
    """scores [B, M, N, K] of one question about one image (M = N = 1) -> float32 logits [B, K]."""
    if scores.shape[1:3] != (1, 1):
        raise ValueError(
            "VQA scores one question about one image: expected scores [B, 1, 1, K], "
            f"got {tuple(scores.shape)}"
        )
    return scores[:, 0, 0].float()


def vqa_targets(labels: torch.Tensor, scores: torch.Tensor, num_answers: int) -> torch.Tensor:
    """Padded (labels [B, A], -100 = none; scores [B, A]) -> dense soft targets float32 [B, K]."""
    keep = labels >= 0
    dense = torch.zeros(labels.shape[0], num_answers, device=labels.device)
    # scatter_add_: the padding adds 0 to column 0, where scatter_ could overwrite a real score there
    return dense.scatter_add_(1, labels.clamp(min=0), scores.float() * keep)


def vqa_loss(scores: torch.Tensor, labels: torch.Tensor, answer_scores: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of every answer against its soft target, summed over answers, mean over
    questions (the usual VQA loss: mean BCE times the number of answers)."""
    logits = vqa_logits(scores)  # [B, K]
    targets = vqa_targets(labels, answer_scores, logits.shape[1])
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / logits.shape[0]


def to_device(batch: dict, device: torch.device, float_dtype: torch.dtype) -> dict:
    """Move the tensors of a batch; frames take the engine's compute dtype (bf16/fp16 params)."""
    out = dict(batch)
    for key in TENSOR_KEYS:
        if key in out and isinstance(out[key], torch.Tensor):
            value = out[key].to(device, non_blocking=True)
            out[key] = value.to(float_dtype) if key in FLOAT_INPUTS and value.is_floating_point() else value
    return out


def training_loss(
    model,
    batch: dict,
    kind: str,
    aggregation: str,
    words: VisualWords | None = None,
    words_only: bool = False,
) -> tuple[torch.Tensor, dict]:
    """Scalar loss of one micro batch, and extra float logs (e.g. the MLM/ITM parts of pre-training).

    words: add the visual-word loss (retrieval); words_only: that loss alone, without the transformer.
    """
    if words is not None:
        return _retrieval_with_words(model, batch, aggregation, words, words_only)
    if kind == "pretrain":
        out = getattr(model, "module", model).pretrain_forward(  # DeepSpeed engine -> the ClipBert module
            batch["frames"],
            batch["input_ids"],
            batch["attention_mask"],
            batch["mlm_labels"],
            batch["itm_labels"],
        )
        return out["loss"], {"mlm_loss": out["mlm_loss"].item(), "itm_loss": out["itm_loss"].item()}
    scores = model(batch["frames"], batch["input_ids"], batch["attention_mask"])  # [B, M, N, K]
    if kind == "vqa":
        return vqa_loss(scores, batch["answer_labels"], batch["answer_scores"]), {}
    b, m, n, k = scores.shape
    labels = batch["labels"]
    if kind == "retrieval":
        return matching_nll(scores, labels, aggregation), {}
    if kind == "mc":  # one score per option: the M options become the classes
        return aggregate_nll(scores[..., 0].transpose(1, 2), labels, aggregation), {}
    if kind == "qa":
        keep = labels != -100  # answers outside ans2label cannot be predicted: no gradient from them
        if not keep.any():
            return scores.float().sum() * 0.0, {}  # keeps every rank's backward in the graph
        return aggregate_nll(scores[keep, 0], labels[keep], aggregation), {}
    raise ValueError(f"task kind {kind!r} cannot be trained (msrvtt_mc is evaluated with a retrieval model)")


def _retrieval_with_words(model, batch, aggregation, words: VisualWords, words_only: bool):
    ids = None if words_only else batch["input_ids"]
    mask = None if words_only else batch["attention_mask"]
    scores, logits = model(batch["frames"], ids, mask, word_ids=words.word_ids)
    word_loss = words.loss(logits, batch["word_targets"])
    if words_only:
        return word_loss, {"word_loss": word_loss.item()}
    match = matching_nll(scores, batch["labels"], aggregation)
    return match + words.weight * word_loss, {"match_loss": match.item(), "word_loss": word_loss.item()}


NO_PREDICTION = -1  # a prediction that matches no label: counted wrong


def checked_argmax(x: torch.Tensor, ties_lose: bool = False) -> torch.Tensor:
    """x [B, K] -> argmax [B], NO_PREDICTION for a row with a NaN and, with `ties_lose`, for a row whose top
    score several classes share. Why: argmax takes a NaN as the maximum (an all-NaN row predicts class 0, a
    hit whenever the label is 0), and takes the first of tied classes: a constant multiple-choice model would
    score the share of answers that are option 0 (all of them where the true option is listed first) instead
    of failing. Ties lose as in the retrieval ranks (metrics.py); open-ended QA keeps the first of tied
    answers: a constant model then gives one fixed answer, the usual answer-prior baseline."""
    pred = x.argmax(-1)
    bad = torch.isnan(x).any(-1)
    if ties_lose:
        bad |= (x == x.amax(-1, keepdim=True)).sum(-1) > 1
    return pred.masked_fill(bad, NO_PREDICTION)


@torch.no_grad()
def predict(model, batch: dict, kind: str, aggregation: str) -> dict:
    """Per-example predictions of a QA / MC batch (retrieval has its own score-matrix path). A NaN score, or
    a multiple-choice top score tied between options, predicts NO_PREDICTION (wrong; see checked_argmax)."""
    scores = model(batch["frames"], batch["input_ids"], batch["attention_mask"])  # [B, M, N, K]
    b, m, n, k = scores.shape
    if kind == "vqa":  # the VQA accuracy of the predicted answer: its soft target
        logits = vqa_logits(scores)  # [B, K]
        pred = logits.argmax(-1)  # [B]: kept for a NaN row too, as the results file needs an answer
        hit = batch["answer_labels"] == pred[:, None]  # [B, A]
        score = (batch["answer_scores"].float() * hit).sum(-1)  # [B]
        # Why: argmax takes NaN as the maximum, so a diverged row would answer class 0 ("yes") and score
        score = score.masked_fill(torch.isnan(logits).any(-1), 0.0)
        return {"pred": pred.cpu(), "score": score.cpu(), "answered": batch["answered"].cpu()}
    if kind == "qa":
        pred = checked_argmax(clip_aggregate(scores[:, 0], aggregation))  # [B]
    elif kind == "mc":
        pred = checked_argmax(clip_aggregate(scores[..., 0].transpose(1, 2), aggregation), ties_lose=True)
    elif kind == "mc_itm":  # rank the options by the retrieval model's log p(match)
        match = match_log_prob(scores.reshape(b * m, n, k), aggregation).view(b, m)
        pred = checked_argmax(match, ties_lose=True)
    else:
        raise ValueError(f"predict() handles qa, vqa, mc and mc_itm, not {kind!r}")
    return {"pred": pred.cpu(), "label": batch["labels"].cpu()}


@torch.no_grad()
def pretrain_eval(model, batch: dict) -> dict:
    """Masked-token and image-text-matching accuracy counts of one pre-training batch."""
    out = model.pretrain_forward(
        batch["frames"], batch["input_ids"], batch["attention_mask"], batch["mlm_labels"], batch["itm_labels"]
    )
    mlm_labels = batch["mlm_labels"].reshape(out["mlm_logits"].shape[:-1])
    masked = mlm_labels != -100
    mlm_hits = (checked_argmax(out["mlm_logits"]) == mlm_labels) & masked
    return {
        "itm_pred": checked_argmax(out["itm_logits"]).cpu(),  # a NaN row predicts nothing, not "no match"
        "itm_label": batch["itm_labels"].cpu(),
        "mlm_correct": mlm_hits.sum(-1).cpu(),  # [B]
        "mlm_total": masked.sum(-1).cpu(),  # [B]
    }
