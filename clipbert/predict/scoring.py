"""Scoring the user's videos (or images) with the trainer's own functions.

Retrieval: evaluate.retrieval_scores (log p(match) of the clip-aggregated matching head) plus, when the run
scored with it, eval.word_score_weight x evaluate.word_log_likelihood, exactly the matrix evaluate_retrieval
ranks. Pre-training: the same table from the pre-training matching head (pretrain_forward's itm_logits).
QA and multiple choice: the model's clip scores aggregated as tasks.predict aggregates them, kept as
log-probabilities instead of only their argmax. VQA: each answer's log-sigmoid, the head's own estimate of
that answer's VQA accuracy (it is trained with binary cross-entropy on soft targets, not a softmax).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from clipbert.train.evaluate import retrieval_scores, word_log_likelihood
from clipbert.train.tasks import clip_aggregate, match_log_prob, vqa_logits

Clips = Iterable[tuple[str, torch.Tensor]]  # (path, frames [1, N, T, 3, L, L])


def encode_texts(predictor, texts: list[str], pairs: list[str] | None = None, literal: bool = True):
    """(ids, mask) int64 [Q, Lt] on the device, tokenized and padded as the evaluation datasets do: a
    "[SEP]" or "[MASK]" typed in a text is words, as in the datasets (text.tokenize's `literal`), except
    for a pre-trained model's texts (literal=False), whose "[MASK]" asks for the MLM head's fillers (their
    "[SEP]", "[CLS]" and "[PAD]" stay words)."""
    from clipbert.data.collate import pad_token_lists
    from clipbert.data.text import tokenize

    tokenizer, max_len = predictor.tokenizer, predictor.max_text_len
    if literal:
        rows = tokenize(tokenizer, texts, max_len, pairs=pairs, literal=True)
    else:
        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        rows = [[cls, *ids[: max_len - 2], sep] for ids in _masked_words(tokenizer, texts)]  # tokenize's cut
    ids, mask = pad_token_lists(rows, tokenizer.pad_token_id)
    return ids.to(predictor.device), mask.to(predictor.device)


def _masked_words(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids, without [CLS]/[SEP] and uncut, of texts whose "[MASK]" is the mask token and whose other
    special-token words are words. Why not tokenize(literal=False): it would also make a typed "[SEP]" a
    segment break and a "[PAD]" a padding token inside the text, which pre-training never showed the model."""
    rows = []
    for text in texts:
        pieces = tokenizer(
            text.split("[MASK]"), add_special_tokens=False, split_special_tokens=True, verbose=False
        )["input_ids"]
        ids = list(pieces[0])
        for piece in pieces[1:]:
            ids += [tokenizer.mask_token_id, *piece]
        rows.append(ids)
    return rows


def token_counts(
    predictor, texts: list[str], pairs: list[str] | None = None, literal: bool = True
) -> list[int]:
    """Each text's (or text pair's) length in tokens with [CLS] and [SEP], before encode_texts truncates it
    to the model's max_text_len as the evaluation does: what the report names as cut."""
    if not literal:
        return [len(ids) + 2 for ids in _masked_words(predictor.tokenizer, texts)]
    if pairs is not None:  # a question and its option, joined as text.tokenize joins them
        from clipbert.data.text import pair_lengths

        return pair_lengths(predictor.tokenizer, texts, pairs, literal=True)
    encoded = predictor.tokenizer(
        texts, truncation=False, padding=False, split_special_tokens=True, verbose=False
    )
    return [len(ids) for ids in encoded["input_ids"]]


def _text_chunks(predictor, frames: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """logits [1, M, N, K] of one video's frames [1, N, T, 3, L, L] against M texts (ids/mask [M, Lt]),
    eval.text_batch texts per forward as retrieval scores them. Why: hundreds of questions or options in one
    forward are M x N BERT sequences at once; its clips are encoded once and reused for every chunk."""
    model, batch = predictor.model, predictor.run.eval.text_batch
    visual = model.encode_visual(frames)
    chunks = [
        model.score(visual, ids[None, m0 : m0 + batch], mask[None, m0 : m0 + batch])  # [1, tb, N, K]
        for m0 in range(0, ids.shape[0], batch)
    ]
    return torch.cat(chunks, 1)


FILL_BATCH = 8  # texts with a [MASK] per forward: their MLM logits are [8, Lt, vocab] floats (~40 MB)


@dataclass
class MaskFill:
    """The pre-training MLM head's top tokens for each [MASK] of one text, given one image."""

    video: str  # the image
    text: int  # its index in the texts
    tokens: list[list[str]]  # [masks][top_k] wordpieces, most probable first
    probs: list[list[float]]  # [masks][top_k] softmax over the vocabulary


@dataclass
class RetrievalScores:
    videos: list[str]  # or images (pretrain)
    score: torch.Tensor  # float32 [V, Q]: what evaluation ranks (match + weight x word)
    match: torch.Tensor  # float32 [V, Q]: log p(match), the matching head alone
    word: torch.Tensor | None  # float32 [V, Q]: the word log-likelihood ratio, when used
    fills: list[MaskFill] = field(default_factory=list)  # pretrain: each (image, text with a [MASK])


@torch.no_grad()
def score_retrieval(predictor, clips: Clips, texts: list[str], top_k: int = 5) -> RetrievalScores:
    model, run = predictor.model, predictor.run
    ids, mask = encode_texts(predictor, texts, literal=run.kind != "pretrain")
    videos, match, word, fills = [], [], [], []
    for path, frames in clips:
        tokens = model.encode_visual(frames).tokens  # [1, N, Lv, H]
        # one video at a time: its visual tokens are dropped once scored, so memory does not grow with V
        if run.kind == "pretrain":
            match.append(_pretrain_match(predictor, tokens, ids, mask))
            fills += _fill_masks(predictor, path, tokens, ids, mask, top_k)
        else:
            match.append(
                retrieval_scores(model, tokens, ids, mask, run.task.aggregation, 1, run.eval.text_batch)[:, 0]
            )
        if predictor.words is not None:
            word.append(word_log_likelihood(model, tokens, ids, predictor.words)[:, 0])  # [Q]
        videos.append(path)
    empty = torch.empty(0, len(texts))
    match_vq = torch.stack(match) if match else empty  # [V, Q]
    word_vq = (torch.stack(word) if word else empty) if predictor.words is not None else None
    score = match_vq if word_vq is None else match_vq + predictor.word_score_weight * word_vq
    return RetrievalScores(videos, score, match_vq, word_vq, fills)


def _pretrain_match(predictor, tokens: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log p(match) [Q] of one image's tokens [1, 1, Lv, H] against every text, from the pre-training
    matching head, eval.text_batch texts at a time."""
    from clipbert.models import VisualTokens

    out = []
    for q0 in range(0, ids.shape[0], predictor.run.eval.text_batch):
        chunk = slice(q0, q0 + predictor.run.eval.text_batch)
        logits = predictor.model.pretrain_scores(VisualTokens(tokens), ids[None, chunk], mask[None, chunk])
        out.append(match_log_prob(logits["itm_logits"][0], predictor.run.task.aggregation).float().cpu())
    return torch.cat(out) if out else torch.empty(0)  # [Q]


def _fill_masks(predictor, path: str, tokens, ids: torch.Tensor, mask: torch.Tensor, top_k: int):
    """MaskFill of each text with a [MASK] token (ids [Q, Lt]) given one image's tokens [1, 1, Lv, H]."""
    from clipbert.models import VisualTokens

    tokenizer = predictor.tokenizer
    masked = (ids == tokenizer.mask_token_id).any(1).nonzero()[:, 0].tolist()  # texts with a [MASK]
    visual, fills = VisualTokens(tokens), []
    for c0 in range(0, len(masked), FILL_BATCH):
        rows = masked[c0 : c0 + FILL_BATCH]
        out = predictor.model.pretrain_scores(visual, ids[None, rows], mask[None, rows], mlm=True)
        probs = out["mlm_logits"][0, :, 0].float().softmax(-1)  # [rows, Lt, vocab]
        for r, q in enumerate(rows):
            positions = (ids[q] == tokenizer.mask_token_id).nonzero()[:, 0]
            top = probs[r, positions].topk(min(top_k, probs.shape[-1]))  # [masks, k]
            words = [tokenizer.convert_ids_to_tokens(row) for row in top.indices.tolist()]
            fills.append(MaskFill(path, q, words, top.values.tolist()))
    return fills


@dataclass
class ClassScores:
    videos: list[str]  # or images (vqa)
    log_probs: list[torch.Tensor]  # per input, float32 [Q, K]: QA [questions, answers]; MC [1, options]


@torch.no_grad()
def score_answers(predictor, clips: Clips, questions: list[str]) -> ClassScores:
    """Open-ended QA: log p(answer) [Q, K] per video, the clip scores aggregated as in tasks.predict.
    VQA: log sigmoid(logit) [Q, K] per image: each answer's predicted VQA accuracy, independently."""
    ids, mask = encode_texts(predictor, questions)
    out = ClassScores([], [])
    for path, frames in clips:
        scores = _text_chunks(predictor, frames, ids, mask)  # [1, Q, N, K]
        if predictor.run.kind == "vqa":  # N = 1: one image, one clip
            log_p = F.logsigmoid(vqa_logits(scores[0].unsqueeze(1)))  # [Q, 1, 1, K] -> [Q, K]
        else:
            log_p = clip_aggregate(scores[0], predictor.run.task.aggregation)  # [Q, K]
        out.videos.append(path)
        out.log_probs.append(log_p.float().cpu())
    return out


@torch.no_grad()
def score_options(predictor, clips: Clips, question: str | None, options: list[str]) -> ClassScores:
    """Multiple choice, [1, O] per video. mc (TGIF): log p(option) of the clip-aggregated option scores
    (the question paired with each option); mc_itm (MSRVTT-MC, a retrieval model): each option caption's
    log p(match), which tasks.predict ranks."""
    pairs = None if question is None else options
    ids, mask = encode_texts(predictor, [question] * len(options) if question else options, pairs)
    aggregation = predictor.run.task.aggregation
    out = ClassScores([], [])
    for path, frames in clips:
        scores = _text_chunks(predictor, frames, ids, mask)  # [1, O, N, K]
        if predictor.run.kind == "mc":
            log_p = clip_aggregate(scores[..., 0].transpose(1, 2), aggregation)  # [1, O]
        else:
            log_p = match_log_prob(scores[0], aggregation)[None]  # [1, O]
        out.videos.append(path)
        out.log_probs.append(log_p.cpu())
    return out
