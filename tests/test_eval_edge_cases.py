"""Evaluation at gallery scale and on unusual but real input: chunked scoring, the visual-word score's
memory, identical captions, the VQA results file, repeated evaluation of one checkpoint."""

import json
from types import SimpleNamespace

import pytest
import torch

from clipbert.models import ClipBert, ClipBertConfig
from clipbert.train import evaluate
from clipbert.train import metrics as M
from clipbert.train.evaluate import retrieval_scores, word_log_likelihood, write_vqa_predictions
from clipbert.train.tasks import VisualWords

VOCAB, LT, H = 97, 12, 128  # 64 px frames -> 2x2 res5 grid -> 1 visual token after the 2x2 pool


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = ClipBertConfig.from_preset(
        "tiny",
        image_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=40,
        max_text_len=LT,
        num_layers=1,
        visual_words=True,
        hidden_dropout=0.5,  # dropout on: evaluation must switch it off, or repeated scores differ
    )
    return ClipBert(cfg)


def _texts(q: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """ids/mask [Q, LT] of texts 3..11 tokens long, padded as the eval data pads them (to the longest)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (q, LT), generator=gen)
    mask = torch.ones_like(ids)
    for row in range(q):
        length = 3 + row % 9
        ids[row, length:], mask[row, length:] = 0, 0
    return ids, mask


def _cfg(video_batch: int, text_batch: int, word_score_weight: float = 0.0):
    return SimpleNamespace(
        eval=SimpleNamespace(
            word_score_weight=word_score_weight, video_batch=video_batch, text_batch=text_batch
        ),
        task=SimpleNamespace(aggregation="lse"),
        train=SimpleNamespace(progress_bar=False),
    )


# ------------------------------------------------------------------------------------- chunked scoring
def test_chunked_scores_equal_one_chunk_and_no_call_exceeds_the_chunk_sizes(model, monkeypatch):
    model.eval()
    tokens = torch.randn(7, 2, 1, H)  # [V, N, Lv, H]
    ids, mask = _texts(11)
    whole = retrieval_scores(model, tokens, ids, mask, "lse", 7, 11)  # [Q, V]
    assert whole.shape == (11, 7) and whole.dtype == torch.float32 and torch.isfinite(whole).all()
    shapes = []
    score = model.score
    monkeypatch.setattr(model, "score", lambda vis, i, m: shapes.append(tuple(i.shape)) or score(vis, i, m))
    for video_batch, text_batch in [(3, 4), (2, 5), (100, 100), (7, 1), (1, 11)]:
        shapes.clear()
        got = retrieval_scores(model, tokens, ids, mask, "lse", video_batch, text_batch)
        # not bit-equal: the chunks' shapes pick other CPU matmul blockings on some CPUs (seen 2026-11-29)
        where = f"{video_batch, text_batch}"
        torch.testing.assert_close(
            got, whole, rtol=1e-6, atol=1e-6, msg=lambda m, where=where: f"{where}: {m}"
        )
        assert max(s[0] for s in shapes) <= video_batch and max(s[1] for s in shapes) <= text_batch
        assert sum(s[0] * s[1] for s in shapes) == 7 * 11  # every (video, text) pair scored exactly once
    # 1 x 1 chunks run other CPU matmul kernels than batched ones: equal up to float rounding
    torch.testing.assert_close(retrieval_scores(model, tokens, ids, mask, "lse", 1, 1), whole)


def test_the_scoring_progress_bar_counts_every_video(model, capsys, monkeypatch):
    model.eval()
    updates = []
    monkeypatch.setattr(evaluate._Progress, "update", lambda self, n=1: updates.append(n))
    ids, mask = _texts(3)
    retrieval_scores(model, torch.randn(5, 1, 1, H), ids, mask, "lse", 2, 3, progress="eval test: scores")
    assert updates == [2, 2, 1]


# ---------------------------------------------------------------------------------- visual-word score
def test_word_score_runs_the_head_in_video_chunks_and_equals_one_call(model, monkeypatch):
    # The head averages a float32 copy of its tokens: a whole shard at once (5,000 paragraph videos x 16
    # clips x 49 tokens x 768: 12 GB) is past what eval.video_batch bounds: WORD_HEAD_VIDEOS at a time.
    model.eval()
    tokens = torch.randn(7, 2, 1, H)
    words = VisualWords(torch.tensor([5, 6, 7, 8]), torch.tensor([-1.0, 0.5, -2.0, 0.0]), 1.0)
    ids, _ = _texts(6)
    ids[0, :3] = torch.tensor([5, 5, 8])  # a repeated word counts once
    ids[1] = 0  # a text with no vocabulary word scores 0 against every video
    whole = word_log_likelihood(model, tokens, ids, words)  # [Q, V]
    assert whole.shape == (6, 7) and (whole[1] == 0).all()
    calls = []
    hook = model.visual_words.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    monkeypatch.setattr(evaluate, "WORD_HEAD_VIDEOS", 3)
    cfg = _cfg(video_batch=2, text_batch=4, word_score_weight=1.0)
    data = SimpleNamespace(input_ids=ids, attention_mask=torch.ones_like(ids), text_to_video=torch.arange(6))
    data.video_ids = list("abcdefg")
    monkeypatch.setattr(evaluate, "_visual_tokens", lambda *a, **k: (list(range(7)), tokens))
    seen = {}
    real_metrics = M.retrieval_metrics
    monkeypatch.setattr(
        M, "retrieval_metrics", lambda s, t: seen.setdefault("s", s) is None or real_metrics(s, t)
    )
    try:
        evaluate.evaluate_retrieval(model, data, None, cfg, "cpu", torch.float32, False, words)
    finally:
        hook.remove()
    assert calls == [3, 3, 1]
    itm = retrieval_scores(model, tokens, ids, data.attention_mask, "lse", 2, 4)
    torch.testing.assert_close(seen["s"], itm + whole)


def test_a_word_head_scored_without_its_vocabulary_says_so(model, monkeypatch, train_log):
    # eval-only without the train split: no word vocabulary, so the combined score training reported
    # cannot be computed; the matching head's numbers alone must not pass for it silently
    model.eval()
    tokens = torch.randn(3, 1, 1, H)
    ids, mask = _texts(3)
    data = SimpleNamespace(
        input_ids=ids, attention_mask=mask, text_to_video=torch.arange(3), video_ids=list("abc")
    )
    monkeypatch.setattr(evaluate, "_visual_tokens", lambda *a, **k: (list(range(3)), tokens))
    cfg = _cfg(2, 2, word_score_weight=1.0)
    out = evaluate.evaluate_retrieval(model, data, None, cfg, "cpu", torch.float32, False, words=None)
    assert "itm_only_t2v_r1" not in out
    assert "scored with the matching head alone" in train_log.text
    train_log.clear()
    cfg.eval.word_score_weight = 0.0  # asked for: nothing to say
    evaluate.evaluate_retrieval(model, data, None, cfg, "cpu", torch.float32, False, words=None)
    assert "matching head alone" not in train_log.text


def test_a_balanced_shard_without_padding_keeps_its_tokens_uncopied(model, monkeypatch):
    # ZeRO-3 pads every rank's tokens to the longest shard; a shard already that long was copied whole
    model.eval()
    tokens = torch.randn(4, 1, 1, H)
    ids, mask = _texts(3)
    data = SimpleNamespace(input_ids=ids, attention_mask=mask, text_to_video=torch.tensor([0, 1, 3]))
    data.video_ids = list("abcd")
    monkeypatch.setattr(evaluate, "_visual_tokens", lambda *a, **k: (list(range(4)), tokens))
    monkeypatch.setattr(evaluate, "_max_over_ranks", lambda value, device: value)
    passed = []
    real = evaluate.retrieval_scores
    monkeypatch.setattr(
        evaluate, "retrieval_scores", lambda m, t, *a, **k: passed.append(t) or real(m, t, *a)
    )
    out = evaluate.evaluate_retrieval(model, data, None, _cfg(2, 2), "cpu", torch.float32, True)
    assert passed[0] is tokens and out["num_videos"] == 4 and out["num_texts"] == 3
    monkeypatch.setattr(evaluate, "_max_over_ranks", lambda value, device: value + 2)  # a longer shard
    passed.clear()
    padded = evaluate.evaluate_retrieval(model, data, None, _cfg(2, 2), "cpu", torch.float32, True)
    assert passed[0].shape[0] == 6 and padded == out  # the padding columns are dropped before ranking


# ------------------------------------------------------------------------------- identical captions
def test_identical_captions_of_two_videos_tie_pessimistically_and_count_once(model):
    # Two videos that look alike (same tokens) with one identical caption each, plus a third video: both
    # captions tie between the two look-alikes, so neither can be a hit at R@1 and each text counts once.
    model.eval()
    twin = torch.randn(1, 2, 1, H)
    tokens = torch.cat([twin, twin, torch.randn(1, 2, 1, H)])  # [V=3, N, Lv, H]
    ids, mask = _texts(3)
    ids[1], mask[1] = ids[0], mask[0]
    scores = retrieval_scores(model, tokens, ids, mask, "lse", 2, 2)
    assert scores[0, 0] == scores[0, 1] == scores[1, 0] == scores[1, 1]
    owner = torch.tensor([0, 1, 2])
    out = M.retrieval_metrics(scores, owner)
    t2v_rank = [int((scores[q] >= scores[q, owner[q]]).sum()) for q in range(3)]
    assert t2v_rank[0] >= 2 and t2v_rank[1] >= 2  # a tie is never a hit
    assert out["t2v_r1"] == pytest.approx(100.0 * sum(r == 1 for r in t2v_rank) / 3)
    assert out["t2v_meanr"] == pytest.approx(sum(t2v_rank) / 3)
    # video-to-text: each look-alike's own caption ties with the other's copy, so neither is a hit either
    v2t_rank = [int((scores[owner != v, v] >= scores[v, v]).sum()) + 1 for v in range(3)]
    assert v2t_rank[0] >= 2 and v2t_rank[1] >= 2
    assert out["v2t_r1"] == pytest.approx(100.0 * sum(r == 1 for r in v2t_rank) / 3)


# ------------------------------------------------------------------------------------ VQA results file
def test_the_vqa_results_file_has_each_question_once_with_vocabulary_answers(tmp_path):
    # two ranks' records: the distributed sampler padded rank 1's shard with example 0 again
    rank0 = [{"index": 0, "pred": 2, "question_id": 5001}, {"index": 2, "pred": 0, "question_id": 5003}]
    rank1 = [{"index": 1, "pred": 1, "question_id": 5002}, {"index": 0, "pred": 2, "question_id": 5001}]
    records = M.dedupe_by_index(rank0 + rank1)
    path = tmp_path / "out" / "vqa_test-dev_predictions.json"
    write_vqa_predictions(records, {"yes": 0, "no": 1, "2": 2}, path)
    rows = json.loads(path.read_text())
    assert rows == [
        {"question_id": 5001, "answer": "2"},
        {"question_id": 5002, "answer": "no"},
        {"question_id": 5003, "answer": "yes"},
    ]
    assert all(type(r["question_id"]) is int and type(r["answer"]) is str for r in rows)
    write_vqa_predictions([], {"yes": 0}, path)  # an empty split: valid JSON, no questions
    assert json.loads(path.read_text()) == []


# ------------------------------------------------------------------------------------------ determinism
def test_evaluating_one_checkpoint_twice_gives_identical_metrics(model):
    # dropout 0.5 in train mode: the evaluation must run the model in eval mode and restore train mode
    model.train()
    gen = torch.Generator().manual_seed(4)
    frames = torch.randn(5, 2, 1, 3, 64, 64, generator=gen)  # [V, Ntest, T, 3, H, W]
    loader = [
        {"frames": frames[:3], "index": torch.arange(3)},
        {"frames": frames[3:], "index": torch.arange(3, 5)},
    ]
    ids, mask = _texts(6)
    data = (
        SimpleNamespace(
            input_ids=ids,
            attention_mask=mask,
            text_to_video=torch.tensor([0, 1, 2, 3, 4, 0]),
            video_ids=list("abcde"),
        ),
        loader,
    )
    engine = SimpleNamespace(module=model, zero_optimization_partition_weights=lambda: False)
    cfg = _cfg(2, 4)
    cfg.task.kind = "retrieval"
    cfg.train.output_dir = "unused"
    first = evaluate.evaluate(engine, cfg, data, "test", "cpu", torch.float32)
    second = evaluate.evaluate(engine, cfg, data, "test", "cpu", torch.float32)
    assert model.training
    first.pop("eval_seconds"), second.pop("eval_seconds")
    assert first == second and first["num_videos"] == 5 and first["unscored_videos"] == 0


def test_a_zero3_progress_bar_counts_to_the_longest_shards_forwards(monkeypatch):
    # rank 0's bar counted to its own loader's length, then ran past it while it repeated its last batch for
    # a rank with a longer shard
    bars = []

    class Bar:
        def __init__(self, total, desc):
            self.total, self.n = total, 0
            bars.append(self)

        def update(self, n=1):
            self.n += n

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(evaluate, "_Progress", Bar)
    monkeypatch.setattr(evaluate, "_max_over_ranks", lambda value, device: value + 2)  # a longer shard
    loader = [{"index": torch.tensor([i])} for i in range(3)]
    records = evaluate.evaluate_examples(
        lambda batch: {"score": batch["index"].float()}, loader, "cpu", torch.float32, True, progress="eval"
    )
    assert [r["index"] for r in records] == [0, 1, 2]
    assert [(bar.total, bar.n) for bar in bars] == [(5, 5)]
