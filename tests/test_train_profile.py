"""train.profile_steps: the phase breakdown of real training steps, its files, and that it changes nothing."""

import json

import pytest
import torch
from test_train_fakes import fake_factory, make_config

from clipbert.train.config import ConfigError
from clipbert.train.run import run
from clipbert.train.step_profile import PHASES

CPU = torch.device("cpu")

# 8 examples, batch 2, accumulation 2 -> 2 optimizer steps per epoch; 3 epochs -> 6 steps.
TRAIN = {"epochs": 3, "grad_accum": 2, "save_every": 0, "eval_every": -1}


pytestmark = pytest.mark.usefixtures("cpu_world")


def _perf(out):
    return json.loads((out / "perf.json").read_text())


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "steps.jsonl").read_text().splitlines()]


def test_profiled_steps_are_broken_down_and_train_exactly_as_unprofiled(tmp_path):
    plain, profiled = tmp_path / "plain", tmp_path / "profiled"
    run(make_config(plain, train=TRAIN), CPU, fake_factory())
    # the window opens after step 1 and holds steps 2-4, an epoch end (step 2 -> 3) included
    summary = run(
        make_config(profiled, train={**TRAIN, "profile_start": 1, "profile_steps": 3}), CPU, fake_factory()
    )
    assert _losses(plain) == _losses(profiled)  # exactly: timing and record_function change no numerics

    root = profiled / "profile"
    result = json.loads((root / "step_profile_rank0.json").read_text())
    assert result["steps"] == [2, 4] and result["synchronized_phases"] is False
    ms = result["phase_ms_per_step"]
    assert set(ms) == {*PHASES, "other"}
    for name in ("data_wait", "to_device", "forward", "loss_check", "backward", "optimizer"):
        assert ms[name] > 0, name
    assert sum(ms.values()) == pytest.approx(result["step_ms"], rel=1e-6)
    assert sum(result["phase_share"].values()) == pytest.approx(1.0, rel=1e-6)
    # 3 steps x 2 micro batches x 2 videos x 2 clips x 1 frame
    assert result["frames_per_s"] == pytest.approx(24 / (result["step_ms"] * 3 / 1e3), rel=1e-6)
    assert summary["perf"]["step_profile"] == result
    assert _perf(profiled)["step_profile"] == result

    report = (root / "step_profile_rank0.md").read_text()
    assert "| forward |" in report and "aten::convolution" in report  # the heavy ops, with their shapes
    trace = json.loads((root / "trace_rank0.json").read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert {"data_wait", "forward", "backward", "optimizer"} <= names
    assert not (plain / "profile").exists() and "step_profile" not in _perf(plain)


def test_a_window_cut_by_the_end_of_the_run_is_written_and_one_past_it_is_not(tmp_path):
    cut, past = tmp_path / "cut", tmp_path / "past"
    run(make_config(cut, train={**TRAIN, "profile_start": 5, "profile_steps": 4}), CPU, fake_factory())
    assert json.loads((cut / "profile" / "step_profile_rank0.json").read_text())["steps"] == [6, 6]
    summary = run(
        make_config(past, train={**TRAIN, "profile_start": 6, "profile_steps": 2}), CPU, fake_factory()
    )
    assert "step_profile" not in summary["perf"] and not (past / "profile").exists()


@pytest.mark.parametrize("key", ["profile_steps", "profile_start"])
def test_negative_profile_settings_are_named(tmp_path, key):
    with pytest.raises(ConfigError, match=f"train.{key}"):
        make_config(tmp_path, train={key: -1})
