"""Evaluation metrics against deliberately simple reference implementations (plain loops, written from the
definitions), on small random and adversarial inputs: retrieval ranks both ways, QA / MC / VQA accuracy,
the pre-training counts, and the gathering of every rank's results before anything is computed.

Conventions checked: ranks are 1-based and pessimistic on ties (every other candidate scoring at least the
true one's score counts above it), NaN and +inf scores rank as -inf, the median of an even count averages
the two middle ranks, and a video's video-to-text rank is its best own text's, counted against other
videos' texts only.
"""

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clipbert.train import evaluate
from clipbert.train.evaluate import evaluate_examples, summarize, summarize_vqa
from clipbert.train.metrics import RECALL_AT, accuracy, retrieval_metrics
from clipbert.train.tasks import predict, pretrain_eval

INF, NAN = float("inf"), float("nan")

# --- retrieval ----------------------------------------------------------------------------------------------


def ref_key(x: float) -> float:
    return -INF if math.isnan(x) or x == INF else x  # a diverged score ranks as the worst possible one


def ref_summary(ranks: list[int], prefix: str) -> dict[str, float]:
    out = {f"{prefix}_r{k}": 100.0 * sum(r <= k for r in ranks) / len(ranks) for k in RECALL_AT}
    out[f"{prefix}_medr"] = float(statistics.median(ranks))
    out[f"{prefix}_meanr"] = sum(ranks) / len(ranks)
    return out


def ref_retrieval(scores: list[list[float]], owner: list[int]) -> dict[str, float]:
    q, v = len(scores), len(scores[0])
    t2v = []
    for t in range(q):
        mine = ref_key(scores[t][owner[t]])
        t2v.append(1 + sum(1 for o in range(v) if o != owner[t] and ref_key(scores[t][o]) >= mine))
    v2t = []
    for video in sorted(set(owner)):
        own = [t for t in range(q) if owner[t] == video]
        others = [t for t in range(q) if owner[t] != video]
        best = None
        for t in own:
            mine = ref_key(scores[t][video])
            rank = 1 + sum(1 for o in others if ref_key(scores[o][video]) >= mine)
            best = rank if best is None else min(best, rank)
        v2t.append(best)
    out = {**ref_summary(t2v, "t2v"), **ref_summary(v2t, "v2t")}
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("t2v", "v2t") for k in RECALL_AT)
    return out


VALUES = [-1.0, 0.0, 0.5, 1.0, NAN, INF, -INF]  # few distinct values: many ties, and every non-finite kind


@st.composite
def retrieval_cases(draw):
    q = draw(st.integers(1, 7))
    v = draw(st.integers(1, 5))
    scores = [[draw(st.sampled_from(VALUES)) for _ in range(v)] for _ in range(q)]
    owner = [draw(st.integers(0, v - 1)) for _ in range(q)]
    return scores, owner


@settings(max_examples=300, deadline=None)
@given(retrieval_cases())
def test_retrieval_matches_the_reference_with_ties_and_non_finite_scores(case):
    scores, owner = case
    got = retrieval_metrics(torch.tensor(scores, dtype=torch.float32), torch.tensor(owner))
    assert got == pytest.approx(ref_retrieval(scores, owner))


@pytest.mark.parametrize("value", [0.0, -3.5, INF, NAN, -INF])
@pytest.mark.parametrize("q, v", [(6, 6), (9, 3), (4, 7)])
def test_a_constant_model_never_scores_a_hit(value, q, v):
    owner = torch.arange(q) % v  # several captions per video where q > v
    m = retrieval_metrics(torch.full((q, v), value), owner)
    assert m["t2v_r1"] == 0.0 and m["t2v_medr"] == v  # every text's video ties with all v: rank v
    assert m["v2t_r1"] == 0.0


def test_a_positive_inf_true_score_is_not_a_hit():
    # +inf is no log-probability (those are <= 0): an overflow must not rank its video first
    scores = torch.tensor([[INF, 0.0, -1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    m = retrieval_metrics(scores, torch.arange(3))
    assert m["t2v_r1"] == pytest.approx(200 / 3) and m["t2v_meanr"] == pytest.approx(5 / 3)  # ranks 3, 1, 1
    # video 0's only text scores +inf: it ranks below the two other texts (0.0 and 0.0)
    assert m["v2t_meanr"] == pytest.approx(5 / 3)
    # all +inf (a diverged model): the worst ranks, not perfect ones
    assert retrieval_metrics(torch.full((3, 3), INF), torch.arange(3))["t2v_r1"] == 0.0


def test_a_gallery_of_one_and_k_beyond_the_gallery():
    m = retrieval_metrics(torch.tensor([[0.3], [-2.0]]), torch.tensor([0, 0]))  # 2 captions, 1 video
    assert m["t2v_r1"] == 100.0 and m["t2v_medr"] == 1.0 and m["v2t_r1"] == 100.0
    m = retrieval_metrics(-torch.eye(3), torch.arange(3))  # the true video always last of 3
    assert m["t2v_r1"] == 0.0 and m["t2v_r5"] == 100.0 and m["t2v_r10"] == 100.0 and m["t2v_medr"] == 3.0


def test_video_to_text_ranks_by_the_best_true_text_and_paragraph_retrieval():
    # video 0 has captions 0-2, video 1 caption 3: video 0's best caption (2: 0.9) is above caption 3 (0.5)
    scores = torch.tensor([[0.1, 0.0], [0.2, 0.0], [0.9, 0.0], [0.5, 0.7]])
    m = retrieval_metrics(scores, torch.tensor([0, 0, 0, 1]))
    assert m["v2t_r1"] == 100.0 and m["v2t_meanr"] == 1.0  # video 1: caption 3 against 0.0s, rank 1
    assert m["t2v_meanr"] == pytest.approx(1.0)  # each text's own video is its top score
    # paragraph retrieval (DiDeMo / ActivityNet): one concatenated text per video, a square matrix
    para = torch.tensor([[0.2, 0.9], [0.8, 0.1]])
    assert retrieval_metrics(para, torch.arange(2)) == pytest.approx(ref_retrieval(para.tolist(), [0, 1]))


@pytest.mark.parametrize("owner", [[0, -1], [0, 2]])
def test_a_text_whose_video_is_not_in_the_gallery_is_refused(owner):
    # -1 used to pick the last video's column before a later scatter failed with an unrelated message
    with pytest.raises(ValueError, match=r"text_to_video must index the 2 videos.*\[1\]"):
        retrieval_metrics(torch.zeros(2, 2), torch.tensor(owner))


def test_int32_text_to_video_is_accepted():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    owner = [0, 1, 0]
    got = retrieval_metrics(scores, torch.tensor(owner, dtype=torch.int32))
    assert got == pytest.approx(ref_retrieval(scores.tolist(), owner))


def test_distributed_retrieval_gathers_columns_before_ranking(monkeypatch, cfg_stub):
    # 5 videos sharded 3 / 2 over two ranks: the metrics must be those of the whole gathered [Q, V] matrix,
    # not per-rank metrics (ranks within a shard only) averaged over shards of unequal size.
    gen = torch.Generator().manual_seed(3)
    full = torch.randn(7, 5, generator=gen)
    owner = torch.tensor([0, 1, 2, 3, 4, 0, 3])
    shards = {0: [0, 2, 4], 1: [1, 3]}

    class Data:
        text_to_video, video_ids, input_ids, attention_mask = owner, list("abcde"), torch.zeros(7, 2), None

    monkeypatch.setattr(evaluate, "_visual_tokens", lambda *a, **k: (shards[0], torch.zeros(3, 1)))
    monkeypatch.setattr(evaluate, "retrieval_scores", lambda *a, **k: full[:, shards[0]])
    empty = torch.empty(7, 0)
    monkeypatch.setattr(
        evaluate,
        "all_gather_objects",
        lambda part: [part, (shards[1], full[:, shards[1]], empty)],
    )
    out = evaluate.evaluate_retrieval(None, Data(), None, cfg_stub, "cpu", torch.float32, balance=False)
    want = ref_retrieval(full.tolist(), owner.tolist())
    assert {k: out[k] for k in want} == pytest.approx(want)
    assert out["num_videos"] == 5 and out["unscored_videos"] == 0


@pytest.fixture
def cfg_stub():
    from types import SimpleNamespace

    return SimpleNamespace(
        eval=SimpleNamespace(word_score_weight=0.0, video_batch=4, text_batch=4),
        task=SimpleNamespace(aggregation="lse"),
        train=SimpleNamespace(progress_bar=False),
    )


# --- QA / MC accuracy ---------------------------------------------------------------------------------------


def ref_accuracy(pred, label, types=None):
    hits = [p == t and t != -100 for p, t in zip(pred, label)]
    out = {"acc": 100.0 * sum(hits) / len(hits)}
    if types is not None:
        for kind in set(types):
            mine = [h for h, k in zip(hits, types) if k == kind]
            out[f"acc_{kind}"] = 100.0 * sum(mine) / len(mine)
    return out


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(-1, 4), st.sampled_from([-100, 0, 1, 2, 3, 4]), st.sampled_from("abc")),
        min_size=1,
        max_size=12,
    )
)
def test_accuracy_matches_the_reference_per_answer_type(rows):
    pred, label, types = (list(c) for c in zip(*rows))
    assert accuracy(torch.tensor(pred), torch.tensor(label), types) == pytest.approx(
        ref_accuracy(pred, label, types)
    )


def test_each_example_counts_once_across_ranks_with_padded_shards(monkeypatch):
    # 7 examples over 3 ranks, strided, each shard padded to 3 with repeats (as a DistributedSampler pads)
    truth = {i: {"pred": i % 3, "label": (i * 2) % 3, "answer_type": "ab"[i % 2]} for i in range(7)}
    shards = [[0, 3, 6], [1, 4, 0], [2, 5, 1]]

    def records_of(indices):
        return [{"index": i, **truth[i]} for i in indices]

    class Loader:  # rank 0's shard, in batches of 2
        def __len__(self):
            return 2

        def __iter__(self):
            yield {"index": torch.tensor(shards[0][:2])}
            yield {"index": torch.tensor(shards[0][2:])}

    def fn(batch):
        rows = [truth[i] for i in batch["index"].tolist()]
        return {
            "pred": torch.tensor([r["pred"] for r in rows]),
            "label": torch.tensor([r["label"] for r in rows]),
        }

    monkeypatch.setattr(evaluate, "to_device", lambda batch, device, dtype: batch)
    monkeypatch.setattr(
        evaluate, "all_gather_objects", lambda part: [part, records_of(shards[1]), records_of(shards[2])]
    )
    records = evaluate_examples(fn, Loader(), "cpu", torch.float32, balance=False)
    assert [r["index"] for r in records] == list(range(7))
    for r in records:
        r["answer_type"] = truth[r["index"]]["answer_type"]
    want = ref_accuracy([truth[i]["pred"] for i in range(7)], [truth[i]["label"] for i in range(7)])
    assert summarize("mc", records) == {"acc": pytest.approx(want["acc"]), "num_examples": 7}
    types = [truth[i]["answer_type"] for i in range(7)]
    want_qa = ref_accuracy([truth[i]["pred"] for i in range(7)], [truth[i]["label"] for i in range(7)], types)
    got = summarize("qa", records)
    assert {k: got[k] for k in want_qa} == pytest.approx(want_qa) and got["num_examples"] == 7


class FixedScores(torch.nn.Module):
    def __init__(self, scores):
        super().__init__()
        self.scores = scores

    def forward(self, frames, input_ids, attention_mask):
        return self.scores


def _batch(labels):
    return {"frames": None, "input_ids": None, "attention_mask": None, "labels": torch.tensor(labels)}


@pytest.mark.parametrize("kind", ["mc", "mc_itm"])
def test_a_constant_multiple_choice_model_scores_zero_not_the_option_0_share(kind):
    # every answer listed first: argmax of tied options took option 0 and scored 100%
    scores = torch.zeros(4, 5, 2, 2 if kind == "mc_itm" else 1)  # [B, M options, N clips, K]
    out = predict(FixedScores(scores), _batch([0, 0, 0, 0]), kind, "lse")
    assert (
        summarize("mc", [{"pred": p, "label": t} for p, t in zip(out["pred"].tolist(), [0] * 4)])["acc"] == 0
    )


@pytest.mark.parametrize("kind", ["qa", "mc", "mc_itm"])
def test_nan_scores_are_never_a_hit(kind):
    k = 2 if kind == "mc_itm" else (6 if kind == "qa" else 1)
    scores = torch.randn(3, 1 if kind == "qa" else 4, 2, k)
    scores[0] = NAN  # all NaN: argmax said class 0
    scores[1, 0, 0, -1] = NAN  # one NaN: argmax took its class as the maximum
    labels = [0, 3 if kind == "qa" else 0, 1]
    if kind == "qa":
        scores[1, 0, 0, 3] = NAN
    out = predict(FixedScores(scores), _batch(labels), kind, "lse")
    assert out["pred"][:2].tolist() == [-1, -1]
    assert out["pred"][2].item() >= 0  # a finite row still predicts


def test_vqa_nan_logits_score_zero_but_still_answer():
    scores = torch.zeros(2, 1, 1, 4)
    scores[0] = NAN
    scores[1, ..., 2] = 1.0
    batch = {
        "frames": None,
        "input_ids": None,
        "attention_mask": None,
        "answer_labels": torch.tensor([[0, 2], [2, -100]]),
        "answer_scores": torch.tensor([[1.0, 0.3], [0.9, 0.0]]),
        "answered": torch.tensor([True, True]),
    }
    out = predict(FixedScores(scores), batch, "vqa", "lse")
    assert out["score"].tolist() == pytest.approx([0.0, 0.9])  # the NaN row answered class 0 and scored 1.0
    assert out["pred"].tolist()[1] == 2 and 0 <= out["pred"].tolist()[0] < 4  # the results file needs one


# --- VQA ----------------------------------------------------------------------------------------------------


def official_vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """The official evaluation (vqaEval.py of VQA v2), transcribed: strip; normalize the humans' answers and
    the prediction only when the humans disagree; the mean over the n leave-one-out subsets of
    min(1, matches / 3)."""
    from clipbert.data.vqa_answers import normalize_answer

    gts = [a.replace("\n", " ").replace("\t", " ").strip() for a in answers]
    res = prediction.replace("\n", " ").replace("\t", " ").strip()
    if len(set(gts)) > 1:
        gts = [normalize_answer(a) for a in gts]
        res = normalize_answer(res)
    accs = []
    for left_out in range(len(gts)):
        others = gts[:left_out] + gts[left_out + 1 :]
        accs.append(min(1.0, sum(a == res for a in others) / 3))
    return sum(accs) / len(accs)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(["yes", "Yes.", "no", "none", "0", "two", "2", "red", "a dog"]),
        min_size=10,
        max_size=10,
    )
)
def test_vqa_scores_as_evaluated_match_the_official_code(answers):
    # VQA v2 has ten human answers per question. (With fewer, answer_scores departs from the official code:
    # n identical answers score 1.0, not min(1, (n-1)/3), and a single answer 1.0, not 0.)
    from clipbert.data.vqa_answers import answer_scores, normalize_answer

    scores = answer_scores(answers, as_evaluated=True)
    candidates = {normalize_answer(a) for a in answers} - {""}  # the vocabulary holds normalized answers only
    for candidate in candidates:
        assert scores.get(candidate, 0.0) == pytest.approx(
            official_vqa_accuracy(candidate, answers), abs=1e-12
        )


def test_vqa_summary_matches_the_reference_per_answer_type():
    gen = torch.Generator().manual_seed(1)
    kinds = ["yes/no", "number", "other"]
    records = [
        {
            "index": i,
            "score": [0.0, 0.3, 0.6, 0.9, 1.0][int(torch.randint(0, 5, (1,), generator=gen))],
            "answered": i % 7 != 0,
            "answer_type": kinds[i % 3],
        }
        for i in range(40)
    ]
    answered = [r for r in records if r["answered"]]
    want = {"vqa_acc": 100.0 * sum(r["score"] for r in answered) / len(answered)}
    for kind in kinds:
        mine = [r["score"] for r in answered if r["answer_type"] == kind]
        want["vqa_acc_" + kind.replace("/", "_")] = 100.0 * sum(mine) / len(mine)
    got = summarize_vqa(records)
    assert {k: got[k] for k in want} == pytest.approx(want)
    assert got["num_answered"] == len(answered) and got["num_examples"] == 40


# --- pre-training -------------------------------------------------------------------------------------------


def test_pretrain_accuracy_pools_masked_tokens_over_examples():
    records = [
        {"itm_pred": 1, "itm_label": 1, "mlm_correct": 1, "mlm_total": 1},
        {"itm_pred": 1, "itm_label": 0, "mlm_correct": 0, "mlm_total": 9},
        {"itm_pred": 0, "itm_label": 0, "mlm_correct": 5, "mlm_total": 10},
    ]
    out = summarize("pretrain", records)
    assert out["mlm_acc"] == pytest.approx(100 * 6 / 20)  # pooled tokens, not the mean of per-example rates
    assert out["itm_acc"] == pytest.approx(200 / 3) and out["num_examples"] == 3


def test_pretrain_nan_logits_are_never_a_hit():
    class NanHeads(torch.nn.Module):
        def pretrain_forward(self, frames, input_ids, attention_mask, mlm_labels, itm_labels):
            return {"mlm_logits": torch.full((2, 3, 5), NAN), "itm_logits": torch.full((2, 2), NAN)}

    batch = {"frames": None, "input_ids": None, "attention_mask": None}
    batch["mlm_labels"] = torch.tensor([[[0, -100, 1]], [[-100, -100, 0]]])
    batch["itm_labels"] = torch.tensor([0, 0])  # negatives: an all-NaN argmax said 0, "no match", a hit
    out = pretrain_eval(NanHeads(), batch)
    assert out["mlm_correct"].tolist() == [0, 0] and out["mlm_total"].tolist() == [2, 1]
    assert out["itm_pred"].tolist() == [-1, -1]
