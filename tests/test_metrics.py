"""Evaluation metrics against hand-computed cases."""

import pytest
import torch

from clipbert.train.metrics import accuracy, dedupe_by_index, format_table, retrieval_metrics


def test_retrieval_hand_computed():
    # 4 texts x 3 videos; texts 0,1 -> video 0, text 2 -> video 1, text 3 -> video 2
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.2],  # text 0: video 0 rank 1
            [0.3, 0.8, 0.5],  # text 1: video 0 rank 3
            [0.7, 0.6, 0.1],  # text 2: video 1 rank 2
            [0.2, 0.4, 0.3],  # text 3: video 2 rank 2
        ]
    )
    owner = torch.tensor([0, 0, 1, 2])
    m = retrieval_metrics(scores, owner)
    # t2v ranks 1, 3, 2, 2
    assert m["t2v_r1"] == pytest.approx(25.0)
    assert m["t2v_r5"] == pytest.approx(100.0)
    assert m["t2v_medr"] == pytest.approx(2.0)
    assert m["t2v_meanr"] == pytest.approx(2.0)
    # v2t: video 0 column [.9,.3,.7,.2]: text 0 ranks 1 -> best 1; video 1 column [.1,.8,.6,.4]: text 2
    # ranks 2; video 2 column [.2,.5,.1,.3]: text 3 ranks 2
    assert m["v2t_r1"] == pytest.approx(100.0 / 3)
    assert m["v2t_medr"] == pytest.approx(2.0)
    assert m["v2t_meanr"] == pytest.approx(5.0 / 3)
    assert m["rsum"] == pytest.approx(25 + 100 + 100 + 100 / 3 + 100 + 100)


def test_ties_rank_pessimistically():
    m = retrieval_metrics(torch.zeros(4, 4), torch.arange(4))  # a constant model: every video tied
    assert m["t2v_r1"] == 0.0 and m["t2v_medr"] == 4.0 and m["v2t_meanr"] == 4.0


def test_perfect_diagonal_and_recall_at_10():
    q = 12
    scores = torch.eye(q) + 0.01 * torch.randn(q, q)
    m = retrieval_metrics(scores, torch.arange(q))
    assert m["t2v_r1"] == 100.0 and m["v2t_r1"] == 100.0 and m["t2v_medr"] == 1.0
    # reverse: the true video is always the worst -> rank 12
    m = retrieval_metrics(-torch.eye(q), torch.arange(q))
    assert m["t2v_r10"] == 0.0 and m["t2v_meanr"] == 12.0


def test_a_videos_own_captions_do_not_rank_against_each_other():
    # video 0 has two identical captions (equal scores), both above every other text in its column
    scores = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8]])
    m = retrieval_metrics(scores, torch.tensor([0, 0, 1]))
    assert m["v2t_r1"] == 100.0 and m["v2t_meanr"] == 1.0
    # a tie with another video's text still ranks pessimistically: video 0's best text is tied with text 2
    scores = torch.tensor([[0.5, 0.1], [0.3, 0.1], [0.5, 0.8]])
    assert retrieval_metrics(scores, torch.tensor([0, 0, 1]))["v2t_medr"] == 1.5  # ranks 2 and 1


@pytest.mark.parametrize("chunk_pairs", [None, 9, 20])  # all texts at once, one text, two at a time
def test_v2t_matches_a_brute_force_count(chunk_pairs, monkeypatch):
    from clipbert.train import metrics

    if chunk_pairs:
        monkeypatch.setattr(metrics, "V2T_CHUNK_PAIRS", chunk_pairs)
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        q, v = 9, 4
        scores = torch.randint(0, 4, (q, v), generator=gen).double()  # small integers: many ties
        owner = torch.randint(0, v, (q,), generator=gen)
        expected = []
        for video in owner.unique().tolist():
            own = [i for i in range(q) if owner[i] == video]
            others = [i for i in range(q) if owner[i] != video]
            best = max(scores[i, video] for i in own)
            expected.append(1 + sum(bool(scores[j, video] >= best) for j in others))
        got = retrieval_metrics(scores, owner)
        assert got["v2t_meanr"] == pytest.approx(sum(expected) / len(expected))
        assert got["v2t_r1"] == pytest.approx(100.0 * sum(r == 1 for r in expected) / len(expected))


def test_nan_scores_rank_worst_and_are_counted(train_log):
    m = retrieval_metrics(torch.full((4, 4), float("nan")), torch.arange(4))  # a diverged model
    assert m["t2v_r1"] == 0.0 and m["t2v_medr"] == 4.0 and m["v2t_r1"] == 0.0 and m["v2t_meanr"] == 4.0
    assert "16 of 16 scores are NaN" in train_log.text
    scores = torch.eye(3)
    scores[1, 1] = float("nan")  # text 1's own video: below the 0 scores of the other two
    m = retrieval_metrics(scores, torch.arange(3))
    assert m["t2v_r1"] == pytest.approx(200 / 3) and m["t2v_meanr"] == pytest.approx(5 / 3)
    assert "1 of 9 scores are NaN" in train_log.text


def test_retrieval_shape_errors():
    with pytest.raises(ValueError, match=r"scores must be \[Q, V\]"):
        retrieval_metrics(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))


def test_accuracy_per_answer_type_and_unknown_answers():
    pred = torch.tensor([1, 2, 3, 0, 5])
    label = torch.tensor([1, 2, 0, -100, 5])
    out = accuracy(pred, label, ["what", "what", "who", "who", "how"])
    assert out["acc"] == pytest.approx(60.0)
    assert out["acc_what"] == 100.0 and out["acc_who"] == 0.0 and out["acc_how"] == 100.0
    # -100 never counts as correct, even against a -100 prediction
    assert accuracy(torch.tensor([-100]), torch.tensor([-100]))["acc"] == 0.0


def test_accuracy_errors():
    with pytest.raises(ValueError, match="same shape"):
        accuracy(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="empty"):
        accuracy(torch.zeros(0), torch.zeros(0))


def test_dedupe_keeps_one_record_per_index():
    records = [
        {"index": 2, "pred": 1},
        {"index": 0, "pred": 3},
        {"index": 2, "pred": 1},
        {"index": 1, "pred": 0},
    ]
    assert [r["index"] for r in dedupe_by_index(records)] == [0, 1, 2]


def test_format_table():
    text = format_table({"t2v_r1": 12.345, "num_videos": 50}, "demo")
    assert "12.35" in text and "num_videos" in text and text.startswith("demo")


@pytest.mark.parametrize("mode", ["lse", "mean", "max"])
def test_confident_matches_still_rank_by_their_margin(mode):
    # log p(match) as clip_aggregate(...)[:, 1] rounds to 0.0 in float32 from a margin of about 17: the
    # true video (margins 28-30) tied with a worse one (17-18) and lost R@1 by the pessimistic tie rule
    from clipbert.train.tasks import clip_aggregate, match_log_prob

    true_video, distractor = [[0.0, 30.0], [0.0, 28.0]], [[0.0, 18.0], [0.0, 17.0]]
    logits = torch.tensor([true_video, distractor])  # [V=2, N=2 clips, 2]
    assert clip_aggregate(logits, mode)[:, 1].tolist() == [0.0, 0.0]  # the saturation this avoids
    scores = match_log_prob(logits, mode)
    # float64 by the paper's definitions, not through clip_aggregate: Eq. 5 (LSE over the clips, then the
    # softmax over the 2 classes) or the softmax of the clip-mean / clip-max logits; with 2 classes each
    # log p(match) is -log1p(exp(-margin))
    x = logits.double()
    pooled = {"lse": x.logsumexp(1), "mean": x.mean(1), "max": x.amax(1)}[mode]  # [V, 2]
    expected = -torch.log1p(torch.exp(-(pooled[:, 1] - pooled[:, 0])))
    torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=0)
    assert retrieval_metrics(scores[None, :], torch.tensor([0]))["t2v_r1"] == 100.0


def test_multiple_choice_by_matching_picks_the_most_confident_option():
    from clipbert.train.tasks import predict

    class Margins(torch.nn.Module):  # per-clip matching logits [B=1, M=3 options, N=2, 2]
        def forward(self, frames, input_ids, attention_mask):
            s = torch.zeros(1, 3, 2, 2)
            s[..., 1] = torch.tensor([17.0, 25.0, 3.0])[None, :, None]  # option 1 is the best match
            return s

    batch = {"frames": None, "input_ids": None, "attention_mask": None, "labels": torch.tensor([1])}
    assert predict(Margins(), batch, "mc_itm", "lse")["pred"].tolist() == [1]  # argmax of ties gave 0
