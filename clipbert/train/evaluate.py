"""Evaluation with Ntest uniformly spaced clips per video (data.num_test_clips), aggregated as in training.

Retrieval: the full text x video score matrix. Each rank encodes the visual tokens of its shard of videos
once, scores every text against them in (video_batch x text_batch) chunks, and the columns are gathered.
QA / VQA / MC / pre-training: per-example predictions, gathered from every rank and deduplicated by
example index, so each example counts exactly once whatever the world size. VQA also writes its predictions
in the official results format (output_dir/vqa_<split>_predictions.json; the best weights' test:
vqa_<split>_best_predictions.json).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from clipbert.data.bad_input import DROPPED, is_fallback
from clipbert.train import metrics as M
from clipbert.train.logging import get_logger, is_rank0
from clipbert.train.tasks import NO_PREDICTION, match_log_prob, predict, pretrain_eval, to_device


def all_gather_objects(obj) -> list:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _max_over_ranks(value: int, device) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    # on the training device: NCCL (every GPU run) reduces only CUDA tensors
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def forwards(loader, balance: bool, device) -> int:
    """How many batches `balanced` yields here: with `balance` the most any rank's loader has (a collective),
    else the loader's (less any whose every row was dropped). The progress bars count to it: with the
    loader's length, a rank 0 with the shorter shard ran past its bar's total."""
    return _max_over_ranks(len(loader), device) if balance else len(loader)


def balanced(loader, balance: bool, device, count: int | None = None):
    """Yields (batch, real), never a batch without rows. With `balance` (ZeRO-3, whose forward is a
    collective) every rank runs the same number of forwards: a rank with a shorter shard, or with skipped
    batches, repeats its last batch as a discarded `real=False` one.

    Why skipped: the DALI loader drops the rows neither DALI nor PyAV can decode, and a batch of such videos
    only (eval.batch_size 1, a run of bad files) has B = 0, which the model refuses: the evaluation stopped,
    where its examples are to be counted unscored (a retrieval video ranks last, a QA example is wrong).
    `count`: forwards(loader, balance, device) where the caller has it (it is a collective: run it once)."""
    if not balance:
        count = None
    elif count is None:
        count = forwards(loader, balance, device)
    last, empty, ran = None, None, 0
    for batch in loader:
        index = batch.get("index")
        if isinstance(index, torch.Tensor) and index.numel() == 0:  # [B] int64; B = 0: every row dropped
            empty = batch
            continue
        last, ran = batch, ran + 1
        yield batch, True
    if count is not None and ran < count and last is None:
        # Every video of this rank's shard was dropped. Why not an error: the other ranks would wait in their
        # collective forwards for this one (a hang, not a message), and they cannot be told without a
        # collective of their own at a point where every rank has run equally many forwards.
        if empty is None:
            raise RuntimeError(
                f"evaluation with ZeRO-3: this rank's loader gave no batch but another rank's gives {count}; "
                "the ranks' shards must have equally many batches (a DistributedSampler pads them so)"
            )
        last = one_row_stand_in(empty)
    while count is not None and ran < count:
        ran += 1
        yield last, False


def one_row_stand_in(empty: dict) -> dict:
    """A batch of one made-up row shaped like `empty` (a batch whose every row was dropped, B = 0): zero
    frames and token ids, attention masks of ones. Only forwarded for its collectives, and discarded."""
    out = {}
    for key, value in empty.items():
        if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == 0:
            fill = 1 if key.endswith("attention_mask") else 0
            out[key] = torch.full((1, *value.shape[1:]), fill, dtype=value.dtype, device=value.device)
        elif key == "bad_videos":  # reported already, as the loader gave the empty batch
            out[key] = []
        elif isinstance(value, list):  # per-row: video ids, paths, answer types
            out[key] = [""] if not value else value[:1]
        else:
            out[key] = value
    return out


# Videos per visual-word head call. Why: the head averages a float32 copy of its tokens, and a whole shard's
# at once (5,000 paragraph-retrieval videos x 16 clips x 49 tokens x 768: 12 GB) is far past the memory the
# scoring chunks (eval.video_batch) are bounded to; 64 such videos are 150 MB.
WORD_HEAD_VIDEOS = 64


class _Progress:
    """A tqdm bar (rank 0, when `desc` is given) that closes itself; a no-op otherwise. Why: a full
    retrieval evaluation (every text against every video) can take minutes while the training bar stands."""

    def __init__(self, total: int | None, desc: str | None):
        self.bar = None
        if desc and is_rank0():
            from clipbert.progress import progress_bar

            self.bar = progress_bar(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _visual_tokens(model, loader, device, dtype, balance, progress: str | None = None):
    """(video indices of this rank's shard, their visual tokens [V_local, N, Lv, H] on `device`, or None)."""
    indices, tokens, discarded = [], [], None
    count = forwards(loader, balance, device)
    with _Progress(count, progress) as bar:
        for batch, real in balanced(loader, balance, device, count):
            batch = to_device(batch, device, dtype)
            visual = model.encode_visual(batch["frames"]).tokens
            if real:
                tokens.append(visual)
                indices += batch["index"].tolist()
            elif not tokens and discarded is None:
                discarded = visual[:1].clone()
            bar.update()
    if not tokens and discarded is not None:
        # ZeRO-3, every video of this shard dropped: a made-up video, scored for the other ranks' collective
        # scoring forwards and then cut off with the padding columns (none of its `indices`)
        tokens = [discarded]
    return indices, (torch.cat(tokens) if tokens else None)


@torch.no_grad()
def retrieval_scores(
    model,
    tokens,
    input_ids,
    attention_mask,
    aggregation,
    video_batch,
    text_batch,
    progress: str | None = None,
):
    """tokens [V, N, Lv, H], ids/mask [Q, Lt] -> log p(match) [Q, V] (float32, CPU)."""
    from clipbert.models import VisualTokens

    device = tokens.device
    q, v = input_ids.shape[0], tokens.shape[0]
    out = torch.empty(q, v)
    with _Progress(v, progress) as bar:  # counts videos scored against every text
        for v0 in range(0, v, video_batch):
            vis = tokens[v0 : v0 + video_batch]  # [vb, N, Lv, H], reused for every text chunk
            vb, n = vis.shape[:2]
            for q0 in range(0, q, text_batch):
                ids = input_ids[q0 : q0 + text_batch].to(device)  # [tb, Lt]
                mask = attention_mask[q0 : q0 + text_batch].to(device)
                tb = ids.shape[0]
                ids, mask = ids.expand(vb, tb, -1), mask.expand(vb, tb, -1)  # same texts for every video
                scores = model.score(VisualTokens(vis), ids, mask)  # [vb, tb, N, 2]
                match = match_log_prob(scores.reshape(vb * tb, n, -1), aggregation)
                out[q0 : q0 + tb, v0 : v0 + vb] = match.view(vb, tb).t().float().cpu()
            bar.update(vb)
    return out


@torch.no_grad()
def word_log_likelihood(model, tokens, input_ids, words) -> torch.Tensor:
    """tokens [V, N, Lv, H], ids [Q, Lt] -> [Q, V]: sum over each text's distinct vocabulary words of
    log p(word | video) - log p(word), the visual-word head's probability against the word's base rate in the
    training videos (float32, CPU). The base rate does not change a text's ranking of videos; it keeps
    long texts and common words from dominating a video's ranking of texts. Other words add nothing."""
    logsigmoid = torch.nn.functional.logsigmoid
    base = logsigmoid(words.prior.float())  # [W]
    log_p = torch.empty(tokens.shape[0], words.word_ids.shape[0])  # [V, W]
    for v0 in range(0, tokens.shape[0], WORD_HEAD_VIDEOS):
        chunk = tokens[v0 : v0 + WORD_HEAD_VIDEOS]  # [vb, N, Lv, H]
        logits = model.visual_words(chunk, words.word_ids) + words.prior  # [vb, W]
        log_p[v0 : v0 + WORD_HEAD_VIDEOS] = (logsigmoid(logits.float()) - base).cpu()
    column = {int(t): k for k, t in enumerate(words.word_ids.tolist())}
    present = torch.zeros(input_ids.shape[0], len(column))  # [Q, W] multi-hot
    for q, ids in enumerate(input_ids.tolist()):
        cols = {column[t] for t in ids if t in column}
        present[q, list(cols)] = 1.0
    return present @ log_p.T


def evaluate_retrieval(model, data, loader, cfg, device, dtype, balance, words=None, split=None) -> dict:
    """words: tasks.VisualWords of the training set, to add the visual-word score (eval.word_score_weight);
    split: shown on the progress bars (train.progress_bar), none without it."""
    show = split if split and getattr(cfg.train, "progress_bar", False) else None
    indices, tokens = _visual_tokens(model, loader, device, dtype, balance, show and f"eval {show}: videos")
    local = torch.empty(len(data.text_to_video), 0)
    has_head = getattr(model, "visual_words", None) is not None
    use_words = words is not None and cfg.eval.word_score_weight > 0 and has_head
    # Why said: an eval-only run without the train split (whose captions give the word vocabulary) would
    # otherwise report the matching head's numbers where training reported the combined score's
    if words is None and cfg.eval.word_score_weight > 0 and has_head and is_rank0():
        get_logger().warning(
            "retrieval eval: the model has a visual-word head and eval.word_score_weight=%s, but no "
            "training-set word vocabulary (is the train split's annotation file missing?): scored with "
            "the matching head alone, unlike the evaluations during training",
            cfg.eval.word_score_weight,
        )
    word_local = torch.empty(len(data.text_to_video), 0)
    if balance and tokens is not None:  # same number of scoring forwards on every rank (ZeRO-3)
        pad = _max_over_ranks(len(tokens), tokens.device) - len(tokens)
        if pad:  # why not always: a cat copies the whole shard's tokens, twice their memory at the peak
            tokens = torch.cat([tokens, tokens[:1].expand(pad, *tokens.shape[1:])])
    if tokens is not None:
        if use_words:
            word_local = word_log_likelihood(model, tokens, data.input_ids, words)[:, : len(indices)]
        local = retrieval_scores(
            model,
            tokens,
            data.input_ids,
            data.attention_mask,
            cfg.task.aggregation,
            cfg.eval.video_batch,
            cfg.eval.text_batch,
            show and f"eval {show}: scores",
        )[:, : len(indices)]  # drop the ZeRO-3 padding columns
    columns, word_columns = {}, {}
    for rank_indices, rank_scores, rank_words in all_gather_objects((indices, local, word_local)):
        for j, video in enumerate(rank_indices):
            columns.setdefault(video, rank_scores[:, j])
            if use_words:
                word_columns.setdefault(video, rank_words[:, j])
    num_videos = len(data.video_ids)
    unexpected = sorted(set(columns) - set(range(num_videos)))
    if unexpected:
        raise RuntimeError(f"retrieval eval scored videos {unexpected[:5]} outside 0..{num_videos - 1}")
    # A video the loader dropped (neither DALI nor PyAV could decode it; reported in bad_videos) has no
    # column: it scores -inf, so its texts rank it last (misses) instead of the evaluation stopping.
    unscored = [i for i in range(num_videos) if i not in columns]
    for i in unscored:
        columns[i] = word_columns[i] = torch.full((len(data.text_to_video),), float("-inf"))
    if unscored and is_rank0():
        log = get_logger()
        log.warning("retrieval eval: %d of %d videos unscored, ranked last", len(unscored), num_videos)
    scores = torch.stack([columns[i] for i in range(num_videos)], dim=1)  # [Q, V] log p(match)
    if not use_words:
        out = M.retrieval_metrics(scores, data.text_to_video)
    else:
        word_scores = torch.stack([word_columns[i] for i in range(num_videos)], dim=1)  # [Q, V]
        out = M.retrieval_metrics(scores + cfg.eval.word_score_weight * word_scores, data.text_to_video)
        itm_only = M.retrieval_metrics(scores, data.text_to_video)
        out.update({f"itm_only_{k}": itm_only[k] for k in ("t2v_r1", "t2v_r5", "t2v_medr", "v2t_r1")})
    out.update(num_texts=scores.shape[0], num_videos=num_videos, unscored_videos=len(unscored))
    return out


def _records(batch: dict, out: dict) -> list[dict]:
    """One record per example of the batch: its index, the outputs, its answer type and question id."""
    types, question_ids = batch.get("answer_types"), batch.get("question_ids")
    records = []
    for i, example in enumerate(batch["index"].tolist()):
        record = {"index": example, **{k: v[i].item() for k, v in out.items()}}
        if types is not None:
            record["answer_type"] = types[i]
        if question_ids is not None:
            record["question_id"] = question_ids[i]
        records.append(record)
    return records


def evaluate_examples(model_fn: Callable, loader, device, dtype, balance, progress: str | None = None):
    """Per-example records of this rank, gathered from all ranks and deduplicated by index."""
    records = []
    count = forwards(loader, balance, device)
    with _Progress(count, progress) as bar:
        for batch, real in balanced(loader, balance, device, count):
            bar.update()
            out = model_fn(to_device(batch, device, dtype))
            if real:
                records += _records(batch, out)
    gathered = [r for part in all_gather_objects(records) for r in part]
    return M.dedupe_by_index(gathered)


# Kinds scored by accuracy over every annotated example (config.ANSWER_KINDS are those whose head an
# ans2label file sizes: another set)
ACCURACY_KINDS = ("qa", "mc", "mc_itm")


def _with_unscored_examples(records: list[dict], dataset, split: str) -> tuple[list[dict], int]:
    """records plus a wrong one (NO_PREDICTION) for each example of `dataset` that has none, and their count.

    Why: the DALI loader drops a row that neither DALI nor PyAV can decode, and that example then had no
    record: the accuracy was over the examples left, not the annotated ones (a split with 10% bad videos
    scored up to 11% too high), unlike retrieval, where such a video ranks last. Counted wrong, as there."""
    scored = {r["index"] for r in records}
    missing = [i for i in range(len(dataset)) if i not in scored]
    if not missing:
        return records, 0
    filled = [{"index": i, "pred": NO_PREDICTION, **_target_record(dataset, i)} for i in missing]
    if is_rank0():
        get_logger().warning(
            "eval %s: %d of %d examples unscored (their videos could not be decoded), counted wrong",
            split,
            len(missing),
            len(dataset),
        )
    return sorted(records + filled, key=lambda r: r["index"]), len(missing)


def _target_record(dataset, index: int) -> dict:
    """Example `index`'s target as a record holds it: `label`, and `answer_type` for QA."""
    target = dataset.eval_target(index)
    record = {"label": target["labels"]}
    if "answer_type" in target:
        record["answer_type"] = target["answer_type"]
    return record


def summarize(kind: str, records: list[dict]) -> dict:
    if kind == "pretrain":
        correct = sum(r["mlm_correct"] for r in records)
        total = sum(r["mlm_total"] for r in records)
        itm = M.accuracy(
            torch.tensor([r["itm_pred"] for r in records]), torch.tensor([r["itm_label"] for r in records])
        )
        return {
            "mlm_acc": 100.0 * correct / max(1, total),
            "mlm_tokens": total,  # masked tokens scored: 0 makes mlm_acc 0 with nothing to score
            "itm_acc": itm["acc"],
            "num_examples": len(records),
        }
    if kind == "vqa":
        return summarize_vqa(records)
    pred = torch.tensor([r["pred"] for r in records])
    label = torch.tensor([r["label"] for r in records])
    types = [r["answer_type"] for r in records] if kind == "qa" else None
    return {**M.accuracy(pred, label, types), "num_examples": len(records)}


def summarize_vqa(records: list[dict]) -> dict:
    """VQA accuracy (the official metric: each prediction scores its soft target), overall and per answer
    type, over the examples that have human answers (none on test-dev/test-std: predictions only)."""
    answered = [r for r in records if r["answered"]]
    out = {"num_examples": len(records), "num_answered": len(answered)}
    if answered:
        out["vqa_acc"] = 100.0 * sum(r["score"] for r in answered) / len(answered)
        by_type: dict[str, list[float]] = {}
        for r in answered:
            by_type.setdefault(r["answer_type"], []).append(r["score"])
        for name, scores in sorted(by_type.items()):  # "yes/no" -> vqa_acc_yes_no
            out[f"vqa_acc_{name.replace('/', '_').replace(' ', '_')}"] = 100.0 * sum(scores) / len(scores)
    return out


def write_vqa_predictions(records: list[dict], ans2label: dict[str, int], path: Path) -> None:
    """[{"question_id", "answer"}] of every example: the official results format, ready for submission."""
    label2ans = {label: answer for answer, label in ans2label.items()}
    rows = [{"question_id": r["question_id"], "answer": label2ans[r["pred"]]} for r in records]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows) + "\n")


class _BadVideoLog:
    """An eval loader that keeps the `bad_videos` reports of the batches it yields (`entries`)."""

    def __init__(self, loader):
        self.loader, self.entries = loader, []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.entries += batch.get("bad_videos", [])
            yield batch


def _report_bad_videos(entries: list[str], split: str) -> int:
    """Bad files met by every rank's evaluation, logged once on rank 0; returns how many.

    Why: a bad video's example is scored with the next example's video that the dataset put in its place,
    or, through DALI, its row is dropped and it counts unscored; either way the metrics are not over exactly
    the annotated data, and this must be said, not left to be noticed."""
    files: dict[str, str] = {}
    by_pyav: set[str] = set()  # files DALI could not decode and PyAV did: scored as any other
    for part in all_gather_objects(entries):
        for entry in part:
            name, _, reason = entry.partition(": ")
            if is_fallback(reason):  # routed up front ("used PyAV") or after DALI failed ("trying PyAV")
                by_pyav.add(name)
            else:
                files.setdefault(name, reason)
    by_pyav -= set(files)  # PyAV then failed on it too: bad after all
    if by_pyav and is_rank0():
        # Why apart: they were reported as bad files whose examples were "scored with a replacement"
        # (an H.264 set read through DALI on a CPU: every video), though each was decoded and scored
        get_logger().info(
            "eval %s: %d video file(s) DALI could not decode were decoded by PyAV and scored as usual: %s%s",
            split,
            len(by_pyav),
            ", ".join(sorted(by_pyav)[:5]),
            f" and {len(by_pyav) - 5} more" if len(by_pyav) > 5 else "",
        )
    if files and is_rank0():
        shown = "; ".join(f"{n}: {r}" if r else n for n, r in sorted(files.items())[:5])
        more = f" and {len(files) - 5} more" if len(files) > 5 else ""
        get_logger().warning(
            "eval %s: %d bad video file(s), %s: %s%s", split, len(files), _bad_video_fate(files), shown, more
        )
    return len(files)


def _bad_video_fate(files: dict[str, str]) -> str:
    """What became of the examples of the bad `files` ({name: reason}), in words. Why: a file the DALI loader
    dropped ("sample dropped") leaves its examples unscored (a retrieval video ranks last, a QA or MC example
    counts wrong), and the log said they were "scored with a replacement", as the dataset's are."""
    dropped = sum(reason.endswith(DROPPED) for reason in files.values())
    if not dropped:
        return "their examples scored with a replacement"
    if dropped == len(files):
        return "dropped, their examples unscored"
    return f"{dropped} dropped (their examples unscored), the others' examples scored with a replacement"


def evaluate(engine, cfg, eval_data, split: str, device, dtype, words=None, name: str | None = None) -> dict:
    """Metrics of the task on `split`; eval_data is (dataset, loader) from the trainer's data builder;
    words: the training set's tasks.VisualWords, for retrieval scored with the visual-word head too; name:
    the evaluation's name in metrics.jsonl and in the files it writes (default: the split), e.g. test_best
    for the best weights' test, whose VQA predictions replaced the final weights' under the split's name."""
    dataset, loader = eval_data
    loader = _BadVideoLog(loader)
    model = engine.module
    was_training = model.training
    model.eval()
    start = time.time()
    kind = cfg.task.kind
    balance = engine.zero_optimization_partition_weights()
    try:
        with torch.no_grad():
            show = f"eval {split}" if cfg.train.progress_bar else None
            if kind == "retrieval":
                out = evaluate_retrieval(model, dataset, loader, cfg, device, dtype, balance, words, split)
            else:
                if kind == "pretrain":
                    fn = lambda b: pretrain_eval(model, b)  # noqa: E731
                else:
                    fn = lambda b: predict(model, b, kind, cfg.task.aggregation)  # noqa: E731
                records = evaluate_examples(fn, loader, device, dtype, balance, show)
                unscored = None
                if kind in ACCURACY_KINDS:  # every annotated example counts, a dropped one as wrong
                    records, unscored = _with_unscored_examples(records, dataset, split)
                out = summarize(kind, records)
                if unscored is not None:
                    out["unscored_examples"] = unscored
                if kind == "vqa" and is_rank0():
                    path = Path(cfg.train.output_dir) / f"vqa_{name or split}_predictions.json"
                    write_vqa_predictions(records, dataset.ans2label, path)
                    get_logger().info("eval %s: %d VQA predictions written to %s", split, len(records), path)
    finally:
        model.train(was_training)
    out["bad_videos"] = _report_bad_videos(loader.entries, split)
    out["eval_seconds"] = time.time() - start
    if is_rank0():
        shown = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in out.items())
        get_logger().info("eval %s: %s", split, shown)
    return out
