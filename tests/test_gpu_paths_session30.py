"""Paths of the GPU run (benchmarks/gpu/run_all.sh) that the CPU dry run skips, checked on the CPU where the
branch itself does not need a GPU: what the GPU session would have measured wrong or crashed on."""

import random

import numpy as np
import torch
from test_bench_paths import _cfg, _one_thread  # noqa: F401 - the same tiny config, one thread (autouse)

from clipbert.perf.paths import PathOptions, build_train_step, make_batch


def test_profile_parts_run_with_the_steps_cudnn_choice(monkeypatch):
    # Every ablation step from +cudnn_benchmark on (+fuse_trainable, the one call 2 profiles, included) runs
    # its step with cuDNN's timed algorithm choice; the profile's isolated CNN and transformer timings ran
    # with cuDNN's heuristics instead, so on the GPU they timed other convolution kernels than the step's.
    from clipbert.perf import profile

    seen = []
    real = profile.time_steps

    def spy(fn, device, **kw):
        seen.append(torch.backends.cudnn.benchmark)
        return real(fn, device, warmup=0, steps=1)

    monkeypatch.setattr(profile, "time_steps", spy)
    cfg = _cfg()
    options = PathOptions("+cudnn_benchmark", precision="fp32", cudnn_benchmark=True)
    step = build_train_step(cfg, options, "cpu")
    data = make_batch(cfg, 1, 2, 1, "cpu")
    raw = profile.host_frames(cfg, 1, 2, 1, pin=False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # the process's setting outside a step
    parts, _ = profile._part_timings(step, cfg, data, raw, warmup=0, steps=1)
    assert set(parts) >= {"cnn", "transformer", "full_step"}
    assert seen and all(seen), seen  # data, cnn, transformer, optimizer and the full step alike
    assert torch.backends.cudnn.benchmark is False  # restored after


class _FakeCudaGenerator:
    def __init__(self):
        self.state = None

    def set_state(self, state):
        self.state = state


def test_resume_on_fewer_gpus_restores_the_rng_of_the_gpus_it_has(monkeypatch):
    # A checkpoint holds the CUDA RNG states of every GPU its process saw (8 on a full node). Resumed where
    # fewer are visible (one GPU), torch.cuda.set_rng_state_all indexed past torch.cuda.default_generators:
    # an IndexError traceback at resume, after the model and optimizer had loaded.
    import torch.cuda.random as cuda_random

    from clipbert.train import checkpoint

    one_gpu = _FakeCudaGenerator()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "default_generators", (one_gpu,))
    monkeypatch.setattr(cuda_random, "_lazy_call", lambda cb: cb())  # CUDA is initialized in a training run
    saved = [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]
    state = {"python": random.getstate(), "numpy": np.random.get_state()}
    state |= {"torch": torch.get_rng_state(), "cuda": saved}
    checkpoint.set_rng_state(state)
    assert torch.equal(one_gpu.state, saved[0])  # cuda:0's state, as the run that saved it had it
