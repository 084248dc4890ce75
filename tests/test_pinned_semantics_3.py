"""Exact, hand-worked values for more pieces whose silent breakage would corrupt results (round 3 of
tests/test_pinned_semantics.py): each test pins one behaviour that a plausible wrong edit (a wrong axis, a
dropped weight, a configured setting ignored) would change without failing the tests elsewhere."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clipbert.data.decoders.pyav import FrameClock
from clipbert.predict import report, scoring

# ---- PyAV frame clock: where a seek aims ------------------------------------------------------------------


def test_a_constant_rate_seek_aims_at_the_frames_time_after_the_streams_start():
    # 10 fps, time base 1/1000, first timestamp 1000: frame 3 is shown at 1000 + 3 / 10 s x 1000 = 1300
    clock = FrameClock(start=1000, time_base=1 / 1000, fps=10.0)
    assert clock.pts(3) == 1300 and clock.index(1300) == 3


def test_a_variable_rate_seek_aims_at_the_frames_own_timestamp():
    # a frame's index is its rank among the sorted timestamps; the seek aims at that frame, not the next
    clock = FrameClock(start=0, time_base=1 / 90_000, fps=3.0, table=np.array([0, 4000, 30_000, 31_000]))
    assert [clock.pts(i) for i in range(4)] == [0, 4000, 30_000, 31_000]
    assert clock.pts(9) == 31_000 and clock.index(30_000) == 2 and clock.index(30_001) is None


# ---- predict: scoring and report with a stand-in model ----------------------------------------------------


def _predictor(kind="retrieval", aggregation="mean", words=None, weight=1.0, unit="video"):
    data = SimpleNamespace(
        test_sampling="rand", num_test_clips=2, frames_per_clip=2, clip_seconds=1.0, image_size=32
    )
    task = SimpleNamespace(name="task", aggregation=aggregation)
    run = SimpleNamespace(
        kind=kind, unit=unit, data=data, task=task, path="run.yaml", eval=SimpleNamespace(text_batch=4)
    )
    model = SimpleNamespace(encode_visual=lambda frames: SimpleNamespace(tokens=frames))
    return SimpleNamespace(
        run=run,
        model=model,
        model_dir="model",
        device="cpu",
        dtype=torch.float32,
        words=words,
        word_score_weight=weight,
    )


def test_best_text_per_video_is_the_highest_scoring_text_of_each_video():
    score = torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.2, 0.3]])  # [V=2, Q=3]
    result = scoring.RetrievalScores(["a.mp4", "b.mp4"], score, score, None)
    out = report.retrieval_json(_predictor(), result, ["t0", "t1", "t2"], [])
    assert [(b["video"], b["text"]) for b in out["best_text_per_video"]] == [("a.mp4", "t1"), ("b.mp4", "t0")]
    assert [(b["text"], b["video"]) for b in out["best_video_per_text"]] == [
        ("t0", "b.mp4"),
        ("t1", "a.mp4"),
        ("t2", "a.mp4"),
    ]
    assert [b["score"] for b in out["best_text_per_video"]] == pytest.approx([0.9, 0.7])


def test_retrieval_scores_add_the_word_score_times_its_weight(monkeypatch):
    # score = log p(match) + eval.word_score_weight x word score, as evaluate_retrieval ranks
    match = {"a": torch.tensor([[-0.5], [-2.0]]), "b": torch.tensor([[-1.0], [-0.25]])}  # [Q=2, 1] per video
    word = {"a": torch.tensor([[4.0], [-8.0]]), "b": torch.tensor([[2.0], [6.0]])}
    monkeypatch.setattr(scoring, "encode_texts", lambda *a, **k: (torch.zeros(2, 3), torch.ones(2, 3)))
    monkeypatch.setattr(scoring, "retrieval_scores", lambda model, tokens, *a: match[tokens])
    monkeypatch.setattr(scoring, "word_log_likelihood", lambda model, tokens, *a: word[tokens])
    predictor = _predictor(words=object(), weight=0.25)
    result = scoring.score_retrieval(predictor, [("a", "a"), ("b", "b")], ["t0", "t1"])
    expected = torch.tensor([[-0.5 + 1.0, -2.0 - 2.0], [-1.0 + 0.5, -0.25 + 1.5]])  # [V, Q]
    torch.testing.assert_close(result.score, expected)
    torch.testing.assert_close(result.match, torch.tensor([[-0.5, -2.0], [-1.0, -0.25]]))


def test_qa_answer_scores_aggregate_clips_as_the_run_configures(monkeypatch):
    # one video, Q = 1 question, N = 2 clips, K = 2 answers; "max" takes each answer's best clip:
    # fused [3, 1], log_softmax -> [-log(1 + e^-2), -2 - log(1 + e^-2)] ("mean" would fuse to [1.5, 0.5])
    logits = torch.tensor([[[[3.0, 0.0], [0.0, 1.0]]]])  # [1, Q, N, K]
    monkeypatch.setattr(scoring, "encode_texts", lambda *a, **k: (torch.zeros(1, 3), torch.ones(1, 3)))
    monkeypatch.setattr(scoring, "_text_chunks", lambda *a: logits)
    out = scoring.score_answers(_predictor(kind="qa", aggregation="max"), [("v.mp4", None)], ["q"])
    lse = float(np.log1p(np.exp(-2.0)))
    torch.testing.assert_close(out.log_probs[0], torch.tensor([[-lse, -2.0 - lse]]))


# ---- predict: a pre-trained model's texts with [MASK] ------------------------------------------------------


def test_masked_texts_are_cut_to_max_text_len_with_cls_and_sep(tokenizer):
    predictor = SimpleNamespace(tokenizer=tokenizer, max_text_len=5, device="cpu")
    text = "red blue green yellow [MASK] square"
    ids, mask = scoring.encode_texts(predictor, [text], literal=False)
    words = tokenizer("red blue green", add_special_tokens=False)["input_ids"]  # 3 words, 1 piece each
    assert ids[0].tolist() == [tokenizer.cls_token_id, *words, tokenizer.sep_token_id]
    assert mask[0].tolist() == [1] * 5
    # the length before the cut: 6 words + [CLS] + [SEP]
    assert scoring.token_counts(predictor, [text], literal=False) == [8]


# ---- training throughput: frames/s over ranks, data wait -------------------------------------------------


def test_throughput_counts_every_frame_of_every_rank_and_caps_the_data_wait(monkeypatch):
    from clipbert.train import perf

    clock = iter([100.0, 102.0, 102.0])  # reset at 100 s; two snapshots 2 s later
    monkeypatch.setattr(perf.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(perf, "step_flops", lambda *a, **k: 10.0)
    meter = perf.Throughput(None, torch.device("cpu"), world_size=2, peak_tflops=None)
    # B=2 videos x N=3 clips x T=4 frames, M=1 text of 8 tokens: 24 frames on this rank, 48 over 2 ranks
    meter.add({"frames": torch.zeros(2, 3, 4, 3, 8, 8), "input_ids": torch.zeros(2, 1, 8)})
    meter.waited(0.5)
    snap = meter.snapshot()
    assert snap["frames_per_s"] == pytest.approx(48 / 2.0) and snap["data_wait_frac"] == pytest.approx(0.25)
    assert snap["tflops_per_device"] == pytest.approx(2 * 10.0 / 2.0 / 1e12)  # 2 videos x 10 FLOPs, 2 s
    meter.waited(5.0)  # waits timed around the window's edges can add up to more than the window
    assert meter.snapshot()["data_wait_frac"] == 1.0


# ---- benchmark FLOPs: the frozen share -------------------------------------------------------------------


def test_the_frozen_forward_share_grows_with_every_clip_and_frame():
    import test_bench_paths

    from clipbert.perf.flops_count import _model_flops

    cfg = test_bench_paths._cfg()
    one, six = _model_flops(cfg, 1, 1, 1), _model_flops(cfg, 2, 3, 1)  # 1 frame; 2 clips x 3 frames
    assert one[1] > 0 and six[1] == pytest.approx(6 * one[1])


# ---- largest-batch search -------------------------------------------------------------------------------


def _probe(b, fits=True, per_sample=100):
    from clipbert.perf.search import Probe

    return Probe(batch=b, fits=fits, peak_bytes=per_sample * b, seconds=0.0)


def test_the_memory_line_runs_through_the_largest_fit_and_the_smallest_failure():
    from clipbert.perf.search import _fit_line

    probes = [_probe(2), _probe(4), _probe(10, False, 150), _probe(6, False, 110)]  # peaks 200 400 1500 660
    intercept, slope = _fit_line(probes)  # through (4, 400) and (6, 660): slope 130, 660 - 6 x 130 = -120
    assert (intercept, slope) == pytest.approx((-120.0, 130.0))


def test_the_search_grows_at_most_32x_per_probe():
    from clipbert.perf.search import find_max_batch

    # 1 byte a sample under a 10^6-byte cap: the line predicts ~10^6, the grow step stops at 32 x 2 = 64
    result = find_max_batch(lambda b: _probe(b, b <= 5000, 1), 1_000_000, limit=10_000, max_probes=3)
    assert [p.batch for p in result.probes] == [1, 2, 64] and not result.exact


def test_a_must_try_batch_at_the_limit_is_probed():
    from clipbert.perf.search import find_max_batch

    # the line (100 bytes a sample, cap 500) would aim at 5; the report's target 8 = limit is probed first
    result = find_max_batch(lambda b: _probe(b), 500, limit=8, max_probes=3, must_try=(8,))
    assert [p.batch for p in result.probes] == [1, 2, 8] and result.max_batch == 8 and result.exact


# ---- VQA answer normalization --------------------------------------------------------------------------


def test_a_mark_touching_a_space_once_is_deleted_everywhere_in_the_answer():
    # the official rule decides per mark over the whole answer: " -" anywhere deletes every "-" ("y-z" ->
    # "yz"); a space after the mark counts the same, and a tab counts as a space (it becomes one first)
    from clipbert.data.vqa_answers import normalize_answer

    assert normalize_answer("x -y-z") == "x yz"
    assert normalize_answer("x- y-z") == "x yz"
    assert normalize_answer("x\t-y-z") == "x yz"
    assert normalize_answer("x-y-z") == "x y z"  # touching no space: each mark becomes a space


def test_a_single_human_answer_is_normalized_even_as_evaluated():
    # the official "all humans agree: normalize nothing" quirk applies to two or more humans only; one
    # answer scores 1.0 in its normalized form, as in training
    from clipbert.data.vqa_answers import answer_scores

    assert answer_scores(["Two."], as_evaluated=True) == {"2": 1.0}
    assert answer_scores(["Two.", "Two."], as_evaluated=True) == {"Two.": pytest.approx(1 / 3)}


# ---- DALI trim: frames PyAV does not show ----------------------------------------------------------------


def test_a_repeated_timestamp_hides_the_later_packet_in_decode_order():
    from dali_pipelines.trim import hidden_ranks

    # by presentation rank: PyAV shows the first packet decoded at a repeated time, so the second is hidden
    pts, none = np.array([0, 10, 10, 20]), np.zeros(4, dtype=bool)
    assert hidden_ranks(pts, none).tolist() == [False, False, True, False]
    # ties keep decode order: the discard-flagged packet decoded second at time 10 takes rank 2
    assert hidden_ranks(pts, np.array([False, False, True, False])).tolist() == [False, False, True, False]
