"""A two-process (gloo) ZeRO-3 evaluation in which the DALI loader dropped every video of rank 1's shard
(dali_pipelines/loader.py drop_rows: every batch of rank 1 has 0 rows).

Under ZeRO-3 every forward is a collective: rank 1 used to raise while rank 0 waited in its forward (a
hang); it now forwards a made-up one-row batch as often as rank 0 (evaluate.balanced, one_row_stand_in).
One torchrun launch evaluates a retrieval, a QA and a multiple-choice checkpoint (eval.only); the tests
check that both ranks finish, that the dropped videos / examples are counted unscored, and that every score
equals the one-process evaluation of the same weights with the same videos dropped (the kept ones scored
alike, the dropped ones -inf or unanswered in both). The bad-video warning says such examples are unscored,
not "scored with a replacement".
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from test_train_fakes import FakeData, FakeSet, collate_dropping, make_config
from torchrun_helper import run_two_processes

from clipbert.data.bad_input import DROPPED
from clipbert.train import evaluate as E
from clipbert.train.run import run

pytestmark = pytest.mark.usefixtures("cpu_world")
CPU = torch.device("cpu")
EVAL_SIZE = 5  # evaluation shards on 2 ranks: 0, 2, 4 and 1, 3
DROPPED_SHARD = {1, 3}  # rank 1's whole shard
ZERO0, ZERO3 = {"zero_optimization": {"stage": 0}}, {"zero_optimization": {"stage": 3}}
# eval.batch_size 1 for retrieval (rank 1: 2 empty batches against rank 0's 3), 2 for QA and multiple
# choice (1 against 2)
CASES = {"ret": ("msrvtt_ret", 1), "qa": ("msrvtt_qa", 2), "mc": ("tgif_action", 2)}


class TargetedSet(FakeSet):
    """FakeSet with the real datasets' eval_target (QADataset, MultipleChoiceDataset): what evaluation scores
    a dropped example against."""

    def eval_target(self, index: int) -> dict:
        item = self[(0, index)]
        target = {"labels": item["labels"]}
        if "answer_type" in item:
            target["answer_type"] = item["answer_type"]
        return target


class DroppingEval(FakeData):
    """FakeData whose evaluation loader drops the rows of the `dropped` examples as the DALI loader does: out
    of the batch (drop_rows itself), named in `bad_videos` as dropped."""

    def __init__(self, cfg, model_cfg, device, dropped=(), **kwargs):
        super().__init__(cfg, model_cfg, device, eval_size=EVAL_SIZE, **kwargs)
        self.dropped = set(dropped)

    def _collate(self, items):
        return collate_dropping(items, self.dropped)

    def eval(self, split):
        data, loader = super().eval(split)
        dataset = loader.dataset
        if self.cfg.task.kind != "retrieval":
            data = dataset = TargetedSet(dataset.kind, dataset.size, dataset.n, m_texts=dataset.m)
        return data, torch.utils.data.DataLoader(
            dataset, loader.batch_size, sampler=loader.sampler, collate_fn=self._collate
        )


def dropping(dropped):
    return lambda cfg, model_cfg, device: DroppingEval(cfg, model_cfg, device, dropped=dropped)


def capture(monkeypatch_setattr) -> dict:
    """What the evaluation scored: the retrieval score matrix [Q, V] and the QA records, as lists."""
    seen = {}
    metrics, summarize = E.M.retrieval_metrics, E.summarize

    def scores(matrix, text_to_video):
        seen.setdefault("scores", matrix.tolist())  # the first call: the matching head's scores
        return metrics(matrix, text_to_video)

    def records(kind, rows):
        seen["records"] = sorted(rows, key=lambda r: r["index"])
        return summarize(kind, rows)

    monkeypatch_setattr(E.M, "retrieval_metrics", scores)
    monkeypatch_setattr(E, "summarize", records)
    return seen


def evaluate_only(out: Path, name: str, zero: dict):
    task, batch_size = CASES[name]
    checkpoint = out / f"train_{name}" / "model"
    cfg = make_config(
        out / f"eval_{name}_{zero['zero_optimization']['stage']}",
        task=task,
        deepspeed=zero,
        eval={"only": True, "checkpoint": str(checkpoint), "batch_size": batch_size},
    )
    return run(cfg, CPU, dropping(DROPPED_SHARD))


def worker(out: str) -> None:
    from clipbert.train.engine import init_distributed
    from clipbert.train.logging import is_rank0

    torch.set_num_threads(1)
    init_distributed(CPU)
    out, results = Path(out), {}
    for name in CASES:
        seen = capture(lambda obj, attr, value: setattr(obj, attr, value))
        results[name] = {"metrics": evaluate_only(out, name, ZERO3)["metrics"], **seen}
    if is_rank0():
        (out / "results.json").write_text(json.dumps(results, default=str))
    torch.distributed.barrier()
    (out / f"done_rank{torch.distributed.get_rank()}").touch()
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def launched(tmp_path_factory, cpu_world):
    out = tmp_path_factory.mktemp("zero3_dropped")
    for name, (task, _) in CASES.items():  # the weights evaluated: one tiny step of training each
        train = {"epochs": 1, "batch_size": 2, "eval_every": -1}
        cfg = make_config(out / f"train_{name}", task=task, train=train, eval={"final_eval": False})
        assert run(cfg, CPU, lambda c, m, d: FakeData(c, m, d, train_size=2))["reason"] == "done"
    proc = run_two_processes(__file__, [str(out)], timeout=180)  # a hang is a TimeoutExpired
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "done_rank0").exists() and (out / "done_rank1").exists()
    results = json.loads((out / "results.json").read_text())
    results["stderr"] = proc.stderr
    return out, results


def _metrics(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "eval_seconds"}


@pytest.mark.slow
def test_retrieval_scores_the_other_rank_and_counts_the_dropped_shard_unscored(launched, monkeypatch):
    out, results = launched
    two = results["ret"]
    assert (two["metrics"]["unscored_videos"], two["metrics"]["num_videos"]) == (2, EVAL_SIZE)
    assert two["metrics"]["bad_videos"] == len(DROPPED_SHARD)
    assert "eval test: 2 bad video file(s), dropped, their examples unscored: bad1.mp4" in results["stderr"]
    scores = torch.tensor(two["scores"])  # [Q, V]
    assert scores.shape == (2 * EVAL_SIZE, EVAL_SIZE)
    kept = [v for v in range(EVAL_SIZE) if v not in DROPPED_SHARD]
    assert torch.isfinite(scores[:, kept]).all()
    assert (scores[:, sorted(DROPPED_SHARD)] == float("-inf")).all()
    # one process, the same weights and the same dropped videos
    seen = capture(monkeypatch.setattr)
    one = evaluate_only(out, "ret", ZERO0)["metrics"]
    torch.testing.assert_close(scores, torch.tensor(seen["scores"]), rtol=1e-5, atol=1e-6)
    assert _metrics(two["metrics"]) == pytest.approx(_metrics(one), rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qa", "mc"])
def test_qa_and_mc_answer_the_other_rank_and_count_the_dropped_shard_unscored(launched, monkeypatch, name):
    out, results = launched
    two = results[name]
    assert (two["metrics"]["unscored_examples"], two["metrics"]["num_examples"]) == (2, EVAL_SIZE)
    assert two["metrics"]["bad_videos"] == len(DROPPED_SHARD)
    assert [r["index"] for r in two["records"]] == list(range(EVAL_SIZE))
    seen = capture(monkeypatch.setattr)
    one = evaluate_only(out, name, ZERO0)["metrics"]
    assert (
        two["records"] == seen["records"]
    )  # the kept examples' predictions, the dropped ones' NO_PREDICTION
    preds = {r["index"]: r["pred"] for r in two["records"]}
    assert [preds[i] for i in sorted(DROPPED_SHARD)] == [E.NO_PREDICTION] * 2
    assert all(preds[i] != E.NO_PREDICTION for i in preds if i not in DROPPED_SHARD)  # answered, not filled
    assert _metrics(two["metrics"]) == pytest.approx(_metrics(one), rel=1e-6)


def _bad_video_warning(entries: list[str]) -> str:
    import logging

    from clipbert.train.logging import get_logger

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    get_logger().addHandler(handler)
    try:
        E._report_bad_videos(entries, "val")
    finally:
        get_logger().removeHandler(handler)
    assert [r.levelname for r in records] == ["WARNING"]
    return records[0].getMessage()


def test_the_bad_video_warning_says_a_dropped_files_examples_are_unscored():
    # A file the DALI loader dropped leaves its examples unscored (ranked last, counted wrong); the warning
    # said of every bad file "their examples scored with a replacement", as of a dataset's replacement.
    dropped = [f"a.mp4: undecodable; {DROPPED}", f"b.mp4: cut; {DROPPED}"]
    message = _bad_video_warning(dropped)
    assert "eval val: 2 bad video file(s), dropped, their examples unscored: a.mp4" in message
    assert "replacement" not in message
    message = _bad_video_warning([*dropped, "c.mp4: missing file"])
    assert (
        "3 bad video file(s), 2 dropped (their examples unscored), the others' examples scored with a "
        in (message)
    )
    assert "2 bad video file(s), their examples scored with a replacement" in _bad_video_warning(
        ["c.mp4: missing file", "d.mp4: truncated"]
    )


if __name__ == "__main__":  # the torchrun worker
    worker(sys.argv[1])
