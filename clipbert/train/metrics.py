"""Evaluation metrics: retrieval recall / ranks in both directions, QA accuracy per answer type, MC accuracy.

Ranks are 1-based and pessimistic on ties (a true item tied with k others ranks k+1), so a model that
scores everything alike gets chance-level numbers, never perfect ones. A NaN or +inf score ranks below every
number (as -inf, ties again pessimistic), so a diverged model gets the worst ranks, never perfect ones; -inf
itself is a real score (an unscored video's), ranked last as it is. The median rank of an even count averages
the two middle ranks.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from clipbert.train.logging import get_logger

RECALL_AT = (1, 5, 10)
V2T_CHUNK_PAIRS = 1 << 25  # (text, video) scores compared at a time for video-to-text ranks: about 300 MB


def _rank_summary(ranks: torch.Tensor, prefix: str) -> dict[str, float]:
    ranks = ranks.double()
    out = {f"{prefix}_r{k}": 100.0 * (ranks <= k).double().mean().item() for k in RECALL_AT}
    # torch.median returns the lower middle value on even counts; the usual median averages the two
    out[f"{prefix}_medr"] = float(ranks.quantile(0.5).item())
    out[f"{prefix}_meanr"] = float(ranks.mean().item())
    return out


def retrieval_metrics(scores: torch.Tensor, text_to_video: torch.Tensor) -> dict[str, float]:
    """scores [Q texts, V videos] (higher = better match); text_to_video [Q]: the column of each text's video.

    text-to-video: the rank of a text's video among all V videos. video-to-text: for each video that has
    texts, the rank of its best own text among all Q texts, where only other videos' texts count against it
    (two identical captions of one video tie with each other, and that must not cost the video rank 2).
    Returns t2v_r1/r5/r10/medr/meanr, v2t_* and rsum (sum of the six recalls).
    """
    if scores.dim() != 2 or text_to_video.shape != scores.shape[:1]:
        raise ValueError(
            f"scores must be [Q, V] and text_to_video [Q]; "
            f"got {tuple(scores.shape)} and {tuple(text_to_video.shape)}"
        )
    # Why: a negative index would silently pick another video's column (scores[rows, -1] is the last one)
    text_to_video = text_to_video.long()
    outside = (text_to_video < 0) | (text_to_video >= scores.shape[1])
    if outside.any():
        raise ValueError(
            f"text_to_video must index the {scores.shape[1]} videos of scores; texts "
            f"{outside.nonzero().flatten()[:5].tolist()} point outside (a text whose video is missing "
            "must get a column, e.g. of -inf scores, not be left out)"
        )
    scores = _nan_ranks_worst(scores.double())
    rows = torch.arange(scores.shape[0])
    true = scores[rows, text_to_video]  # [Q]
    t2v_ranks = (scores >= true[:, None]).sum(1)  # [Q], includes the true video itself
    # v2t: a video's best own text (the highest of its scores in the video's column) ranks 1 + the other
    # videos' texts that score at least as high there. Why not each own text's rank, then the least: that
    # compares every text with every text ([Q, Q]: 3.6e9 pairs, 77 s on MSRVTT's full test split of 59,800
    # texts), where a rank only falls as the score rises. In chunks of columns: [Q, c] at a time.
    best_own = torch.full((scores.shape[1],), float("-inf"), dtype=scores.dtype)
    best_own.scatter_reduce_(0, text_to_video, true, reduce="amax")  # [V]; -inf for a video without texts
    own_at_best = torch.zeros(scores.shape[1], dtype=torch.long)  # [V]: its texts tied at its best
    own_at_best.scatter_add_(0, text_to_video, (true >= best_own[text_to_video]).long())
    at_least_best = torch.empty(scores.shape[1], dtype=torch.long)  # [V]: every text, its own included
    step = max(1, V2T_CHUNK_PAIRS // max(1, scores.shape[0]))
    for v0 in range(0, scores.shape[1], step):
        at_least_best[v0 : v0 + step] = (scores[:, v0 : v0 + step] >= best_own[None, v0 : v0 + step]).sum(0)
    best = at_least_best - own_at_best + 1  # [V]
    v2t_ranks = best[torch.unique(text_to_video)]
    out = {**_rank_summary(t2v_ranks, "t2v"), **_rank_summary(v2t_ranks, "v2t")}
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("t2v", "v2t") for k in RECALL_AT)
    return out


def _nan_ranks_worst(scores: torch.Tensor) -> torch.Tensor:
    """NaN and +inf -> -inf, with a warning. Why: every comparison with NaN is false, so a NaN true score
    would count no video above it (rank 0, a hit) and a NaN matrix would score perfectly; and +inf is no score
    the heads give (log p(match) <= 0, finite word scores) but an overflow that would rank its video first."""
    bad = torch.isnan(scores) | torch.isposinf(scores)
    count = int(bad.sum())
    if count:
        get_logger().warning(
            "retrieval metrics: %d of %d scores are NaN or +inf; they rank worst", count, scores.numel()
        )
        scores = scores.masked_fill(bad, float("-inf"))
    return scores


def accuracy(pred: torch.Tensor, label: torch.Tensor, types: list[str] | None = None) -> dict[str, float]:
    """Accuracy in percent, and per answer type (`acc_<type>`) when types are given.

    Labels of -100 (answers outside the answer vocabulary) count as wrong, as in the original evaluation.
    """
    if pred.shape != label.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and label {tuple(label.shape)} must have the same shape")
    if pred.numel() == 0:
        raise ValueError("accuracy of an empty evaluation set")
    hits = (pred == label) & (label != -100)
    out = {"acc": 100.0 * hits.double().mean().item()}
    if types is not None:
        if len(types) != len(pred):
            raise ValueError(f"{len(types)} answer types for {len(pred)} predictions")
        by_type = defaultdict(list)
        for hit, kind in zip(hits.tolist(), types):
            by_type[kind].append(hit)
        for kind, values in sorted(by_type.items()):
            out[f"acc_{kind}"] = 100.0 * sum(values) / len(values)
    return out


def dedupe_by_index(records: list[dict]) -> list[dict]:
    """Keep one record per example `index` (distributed samplers pad shards with repeats), sorted by index."""
    unique = {}
    for record in records:
        unique.setdefault(int(record["index"]), record)
    return [unique[i] for i in sorted(unique)]


def format_table(metrics: dict, title: str = "") -> str:
    """A two-column text table of the metrics (floats to 2 decimals)."""
    rows = [(k, f"{v:.2f}" if isinstance(v, float) else str(v)) for k, v in metrics.items()]
    width = max([len(k) for k, _ in rows] + [6])
    lines = [title] if title else []
    lines += [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 10}"]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)
