"""benchmarks/demo_diagnosis.py: the in-memory matching trainer behind the demo trials in docs/TRAINING.md."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

# PyAV is a hard dependency, but the GPU test machine runs `-m needs_cuda` without it: skip, not error.
pytest.importorskip("av", reason="PyAV is not installed")
import torch  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_diagnosis.py"


@pytest.fixture(scope="module")
def diagnosis():
    spec = importlib.util.spec_from_file_location("demo_diagnosis", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_clip_log_probs_is_the_logsumexp_aggregation(diagnosis):
    scores = torch.randn(3, 2, 4, 2, dtype=torch.float64)
    expected = torch.log(torch.exp(scores).sum(2) / torch.exp(scores).sum((2, 3)).unsqueeze(-1))
    torch.testing.assert_close(diagnosis.clip_log_probs(scores), expected.float())


def test_oracle_frames_show_the_ground_truth_colour(diagnosis, bench):
    ids = sorted(diagnosis.read_captions(bench / "annotations", "train"))
    frames, hw = diagnosis.oracle_frames(bench, ids, 16)
    truth = json.loads((bench / "ground_truth" / f"{ids[0]}.json").read_text())
    assert frames.shape == (len(ids), 8, 3, 16, 16) and hw.tolist()[0] == [16, 16]
    assert frames[0, 3, :, 5, 7].tolist() == truth["objects"][0]["colors"][0]["rgb"]


def test_cached_frames_decode_once(diagnosis, bench):
    ids = sorted(diagnosis.read_captions(bench / "annotations", "test"))
    frames, hw = diagnosis.cached_frames(bench, "test", ids, 32)
    assert frames.shape == (len(ids), 8, 3, 32, 32) and frames.dtype == torch.uint8
    assert (hw.max(1).values == 32).all()  # the longer side fills L
    again, _ = diagnosis.cached_frames(bench, "test", ids, 32)  # from the cache file
    assert torch.equal(frames, again) and (bench / ".diagnosis_test_32.pt").is_file()


@pytest.mark.parametrize("oracle", [False, True])
def test_a_short_trial_logs_loss_and_r1(diagnosis, bench, tmp_path, oracle):
    log = tmp_path / "log.jsonl"
    argv = ["--data", str(bench), "--image-size", "64", "--steps", "50", "--batch", "2"]
    argv += ["--negatives", "1", "--eval-every", "50", "--out", str(log)] + (["--oracle"] if oracle else [])
    assert diagnosis.main(argv) == 0
    record = json.loads(log.read_text().splitlines()[-1])
    assert record["step"] == 50 and math.isfinite(record["loss"]) and 0.0 <= record["test_r1"] <= 100.0
    # R@1 counts whole texts: one caption per test video, one per training video (the first 50)
    for key, split, cap in (("test_r1", "test", None), ("train_r1", "train", 50)):
        n = len(diagnosis.read_captions(bench / "annotations", split))
        n = min(n, cap or n)
        hits = record[key] * n / 100.0
        assert hits == pytest.approx(round(hits), abs=1e-4), (key, record[key], n)


def test_a_visual_word_trial_logs_word_accuracy(diagnosis, bench, tmp_path):
    log = tmp_path / "log.jsonl"
    argv = ["--data", str(bench), "--image-size", "64", "--steps", "4", "--batch", "2", "--negatives", "1"]
    argv += ["--eval-every", "4", "--word-loss", "1", "--word-steps", "3", "--word-batch", "4"]
    argv += ["--out", str(log)]
    assert diagnosis.main(argv) == 0
    record = json.loads(log.read_text().splitlines()[-1])
    assert record["step"] == 4 and 0.0 <= record["train_r1"] <= 100.0
    assert all(0.0 <= record[g] <= 100.0 for g in ("colour", "shape", "size"))
