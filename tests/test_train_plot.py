"""training_curves.png: smoothing, which metrics go on which axes, and the panels drawn per run kind."""

import json
import math

import pytest
from PIL import Image

from clipbert.train.plot import eval_series, plot_curves, smooth


def test_smooth_is_unbiased_from_the_first_point_and_follows_a_step():
    assert smooth([3.0] * 20, window=5) == pytest.approx([3.0] * 20)
    assert smooth([7.0, 1.0], window=10)[0] == pytest.approx(7.0)
    ys = smooth([0.0] * 10 + [1.0] * 40, window=5)
    assert all(a <= b for a, b in zip(ys[10:], ys[11:]))  # climbs towards the new level, never past it
    assert 0.0 < ys[10] < 0.5 and ys[-1] == pytest.approx(1.0, abs=1e-3)
    assert smooth([1.0, 5.0], window=1) == [1.0, 5.0]


def test_eval_series_sorts_scores_from_ranks_and_drops_counts():
    rows = [
        {"step": 10, "split": "val", "t2v_r1": 20.0, "t2v_medr": 3.0, "rsum": 300.0, "num_texts": 25},
        {"step": 20, "split": "val", "t2v_r1": 30.0, "t2v_medr": 2.0, "acc": float("nan"), "overflow": True},
        {"step": 20, "split": "test", "t2v_r1": 24.0, "t2v_meanr": 5.5},
        {"split": "test", "t2v_r1": 99.0},  # an exported model's eval.only record: no step
    ]
    series = eval_series(rows)
    assert set(series) == {"percent", "rank"}
    assert set(series["percent"]) == {"t2v_r1"}
    assert series["percent"]["t2v_r1"] == {"val": ([10, 20], [20.0, 30.0]), "test": ([20], [24.0])}
    assert set(series["rank"]) == {"t2v_medr", "t2v_meanr"}


def _write_run(path, metrics, lr=True):
    steps = [
        {"step": i, "loss": 1.0 / i, "match_loss": 0.5 / i} | ({"lr": 1e-4} if lr else {})
        for i in range(1, 40)
    ]
    steps.append({"step": 40, "loss": None})  # every micro batch bad: no loss
    (path / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))


@pytest.mark.parametrize(
    "metrics, lr, size",
    [
        # retrieval: loss, lr, scores, ranks in a 2x2 grid
        ([{"step": 20, "split": "val", "t2v_r1": 10.0, "t2v_medr": 4.0}], True, (1400, 800)),
        # QA: no ranks and no learning rate logged: loss and scores side by side
        (
            [{"step": 20, "split": "val", "acc": 40.0}, {"step": 39, "split": "test", "acc": 38.0}],
            False,
            (1400, 400),
        ),
        # no evaluation yet, loss only
        ([], False, (700, 400)),
    ],
)
def test_plot_draws_one_panel_per_kind_of_curve(tmp_path, metrics, lr, size):
    _write_run(tmp_path, metrics, lr)
    path = plot_curves(tmp_path)
    assert path == tmp_path / "training_curves.png"
    with Image.open(path) as img:
        assert img.size == size


def test_plot_of_an_empty_run_writes_nothing(tmp_path):
    assert plot_curves(tmp_path) is None
    assert not (tmp_path / "training_curves.png").exists()
    assert math.isfinite(smooth([2.0], 3)[0])
