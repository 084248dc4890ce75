"""VQA in the trainer: soft targets, the BCE loss against a float64 formula, predictions scored with the
official accuracy, the per-type summary and the results file."""

import json

import pytest
import torch

from clipbert.train.evaluate import summarize_vqa, write_vqa_predictions
from clipbert.train.tasks import predict, to_device, training_loss, vqa_targets

K = 5
LABELS = torch.tensor([[0, 3, -100], [2, -100, -100], [-100, -100, -100]])  # [B, A], -100 = padding
SCORES = torch.tensor([[0.3, 1.0, 0.0], [0.9, 0.0, 0.0], [0.0, 0.0, 0.0]])


class FixedScores(torch.nn.Module):
    """Stands in for ClipBert: returns the given scores [B, 1, 1, K] (through a weight, for gradients)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits)

    def forward(self, frames, input_ids, attention_mask):
        return self.logits[:, None, None, :]


def batch(**extra):
    return {
        "frames": torch.zeros(3, 1, 1, 3, 64, 64),
        "input_ids": torch.ones(3, 1, 4, dtype=torch.int64),
        "attention_mask": torch.ones(3, 1, 4, dtype=torch.int64),
        "answer_labels": LABELS,
        "answer_scores": SCORES,
        "answered": torch.tensor([True, True, False]),
        **extra,
    }


def test_targets_are_dense_and_padding_never_overwrites_column_0():
    dense = vqa_targets(LABELS, SCORES, K)
    want = torch.zeros(3, K)
    want[0, 0], want[0, 3], want[1, 2] = 0.3, 1.0, 0.9
    assert torch.equal(dense, want)  # row 0's real 0.3 in column 0 survives its padding entry


def test_loss_is_bce_summed_over_answers_and_averaged_over_questions():
    logits = torch.randn(3, K, dtype=torch.float64)
    model = FixedScores(logits.float().clone())
    loss, _ = training_loss(model, batch(), "vqa", "lse")
    target = vqa_targets(LABELS, SCORES, K).double()
    p = torch.sigmoid(logits)
    want = -(target * p.log() + (1 - target) * (1 - p).log()).sum() / 3
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    loss.backward()
    want_grad = (torch.sigmoid(logits) - target) / 3  # d/dlogit of the BCE
    torch.testing.assert_close(model.logits.grad.double(), want_grad, rtol=1e-5, atol=1e-6)


def test_a_video_shaped_score_is_refused_naming_the_shape():
    model = FixedScores(torch.zeros(3, K))
    model.forward = lambda f, i, m: torch.zeros(3, 1, 2, K)  # two clips
    with pytest.raises(ValueError, match=r"expected scores \[B, 1, 1, K\], got \(3, 1, 2, 5\)"):
        training_loss(model, batch(), "vqa", "lse")


def test_predictions_score_their_soft_target_and_scores_stay_float32():
    logits = torch.full((3, K), -5.0)
    logits[0, 0], logits[1, 4], logits[2, 1] = 5.0, 5.0, 5.0  # row 0: 0.3 answer, row 1: a wrong one
    moved = to_device(batch(), torch.device("cpu"), torch.bfloat16)
    assert moved["answer_scores"].dtype == torch.float32 and moved["frames"].dtype == torch.bfloat16
    out = predict(FixedScores(logits), moved, "vqa", "lse")
    assert out["pred"].tolist() == [0, 4, 1]
    assert out["score"].tolist() == pytest.approx([0.3, 0.0, 0.0])  # 0.3 exactly: not rounded to bf16
    assert out["answered"].tolist() == [True, True, False]


def test_summary_counts_answered_questions_per_type_and_the_results_file(tmp_path):
    records = [
        {"index": 0, "pred": 1, "score": 1.0, "answered": True, "answer_type": "yes/no", "question_id": 10},
        {"index": 1, "pred": 0, "score": 0.3, "answered": True, "answer_type": "other", "question_id": 11},
        {"index": 2, "pred": 0, "score": 0.0, "answered": True, "answer_type": "other", "question_id": 12},
        {"index": 3, "pred": 1, "score": 0.0, "answered": False, "answer_type": "unknown", "question_id": 13},
    ]
    out = summarize_vqa(records)
    assert out["num_examples"] == 4 and out["num_answered"] == 3
    assert out["vqa_acc"] == pytest.approx(100 * 1.3 / 3)
    assert out["vqa_acc_yes_no"] == pytest.approx(100.0) and out["vqa_acc_other"] == pytest.approx(15.0)
    assert "vqa_acc_unknown" not in out
    assert summarize_vqa(records[3:]) == {"num_examples": 1, "num_answered": 0}  # test-dev: no accuracy
    path = tmp_path / "out" / "vqa_test_predictions.json"
    write_vqa_predictions(records, {"no": 0, "yes": 1}, path)
    assert json.loads(path.read_text()) == [
        {"question_id": 10, "answer": "yes"},
        {"question_id": 11, "answer": "no"},
        {"question_id": 12, "answer": "no"},
        {"question_id": 13, "answer": "yes"},
    ]


def _tiny(**overrides):
    from clipbert.models import ClipBert, ClipBertConfig

    torch.manual_seed(len(overrides))
    return ClipBert(
        ClipBertConfig.from_preset("tiny", backbone_layers=[1, 1, 1, 1], num_layers=1, **overrides)
    )


def test_fine_tuning_from_pretraining_starts_a_new_head_but_evaluation_refuses(tmp_path, train_log):
    from clipbert.train import checkpoint as ckpt

    pretrained = _tiny()  # the 2-way matching head of pre-training
    pretrained.save_pretrained(tmp_path / "model")
    vqa = _tiny(head="qa", num_answers=7)
    fresh_head = vqa.classifier[2].weight.detach().clone()
    ckpt.load_pretrained_weights(vqa, tmp_path / "model", "train.init_checkpoint", new_head=True)
    assert "a new task head" in train_log.text
    assert "classifier.2.weight [2, 256] -> [7, 256]" in train_log.text
    torch.testing.assert_close(vqa.encoder.state_dict(), pretrained.encoder.state_dict())
    assert torch.equal(vqa.classifier[2].weight, fresh_head)  # kept its initialization
    with pytest.raises(
        ValueError, match=r"eval.checkpoint=.*shapes differ: classifier.2.bias \[2\] vs \[7\]"
    ):
        ckpt.load_pretrained_weights(_tiny(head="qa", num_answers=7), tmp_path / "model", "eval.checkpoint")
    wider = _tiny(
        head="qa", num_answers=7, intermediate_size=64
    )  # not a head: an error even when fine-tuning
    with pytest.raises(
        ValueError, match=r"another model \(model.intermediate_size: checkpoint 512, config 64\)"
    ):
        ckpt.load_pretrained_weights(wider, tmp_path / "model", "train.init_checkpoint", new_head=True)


@pytest.mark.usefixtures("cpu_world")
def test_the_best_weights_test_predictions_do_not_replace_the_final_ones(bench, tmp_path, monkeypatch):
    """The final weights' test evaluation writes vqa_test_predictions.json; the best weights' (test_best)
    wrote the same file over it, so the final weights' results file was lost."""
    import shutil

    from test_train_fakes import make_config

    from clipbert.train import best
    from clipbert.train.run import run

    ann = tmp_path / "annotations"
    shutil.copytree(bench / "annotations", ann)
    train = ann / "vqa_train.jsonl"
    train.write_text("".join(train.read_text().splitlines(keepends=True)[:8]))
    data = {"ann_dir": str(ann), "video_dir": str(bench / "videos"), "image_root": str(bench)}
    monkeypatch.setattr(best, "beats", lambda value, chosen, metric: not chosen)  # the first stays the best
    cfg = make_config(tmp_path / "out", task="vqa", data=data, train={"epochs": 2})
    summary = run(cfg, torch.device("cpu"))
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in rows] == ["val", "val", "test", "test_best"]
    assert summary["best"]["step"] == rows[0]["step"] < rows[2]["step"]
    final = json.loads((tmp_path / "out" / "vqa_test_predictions.json").read_text())
    best = json.loads((tmp_path / "out" / "vqa_test_best_predictions.json").read_text())
    assert len(final) == len(best) == rows[2]["num_examples"]
