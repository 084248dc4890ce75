"""Model FLOPs of one training step, for MFU.

Convention (as in PaLM/nanoGPT MFU): a step costs 3x the forward FLOPs of the trainable parts (forward,
input gradient, weight gradient) plus 1x the forward FLOPs of frozen parts (stem and res2 under
FREEZE_AT=2 get no backward). Recomputation by activation checkpointing is not model work and is not
counted, so checkpointing lowers MFU honestly.

The forward count comes from `clipbert.models.forward_flops` when the model package provides it, and is
cross-checked against torch's FlopCounterMode (matmul/conv/attention FLOPs, 2 per multiply-add) on one
sample; the frozen share always comes from FlopCounterMode's per-module counts.
"""

from __future__ import annotations

import dataclasses
import inspect

import torch
from torch.utils.flop_counter import FlopCounterMode


@dataclasses.dataclass(frozen=True)
class StepFlops:
    forward: float  # forward FLOPs per sample (one video: N clips x T frames, M texts)
    forward_frozen: float  # the part of `forward` spent in modules without trainable parameters
    source: str  # "forward_flops" or "FlopCounterMode"
    counter_forward: float  # FlopCounterMode's forward count, for the cross-check

    @property
    def step(self) -> float:
        """Model FLOPs per sample of one forward + backward."""
        return 3.0 * (self.forward - self.forward_frozen) + self.forward_frozen

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "step": self.step}


def _frozen_roots(model: torch.nn.Module) -> list[str]:
    """Qualified names of the largest submodules with parameters, none of them trainable."""
    roots: list[str] = []

    def visit(module: torch.nn.Module, name: str) -> None:
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            roots.append(name)
            return
        for child_name, child in module.named_children():
            visit(child, f"{name}.{child_name}")

    visit(model, type(model).__name__)
    return roots


def counted_forward_flops(model: torch.nn.Module, run_forward) -> tuple[float, float]:
    """(total, frozen) forward FLOPs of `run_forward()` by FlopCounterMode, without autograd."""
    roots = _frozen_roots(model)
    with torch.no_grad(), FlopCounterMode(display=False, depth=None) as counter:
        run_forward()
    counts = {name: float(sum(ops.values())) for name, ops in counter.get_flop_counts().items()}
    return counts.get("Global", 0.0), sum(counts.get(name, 0.0) for name in roots)


def _model_forward_flops(cfg, n_clips: int, frames_per_clip: int, texts: int) -> float | None:
    """clipbert.models.forward_flops for one sample, if the model package has it (signature read live)."""
    try:
        from clipbert.models import forward_flops
    except ImportError:
        return None
    params = inspect.signature(forward_flops).parameters
    known = {
        "batch": 1,
        "batch_size": 1,
        "n_clips": n_clips,
        "num_clips": n_clips,
        "frames_per_clip": frames_per_clip,
        "num_frames": frames_per_clip,
        "texts": texts,
        "num_texts": texts,
        "text_len": cfg.max_text_len,
    }
    kwargs = {k: v for k, v in known.items() if k in params}
    try:
        value = forward_flops(cfg, **kwargs)
    except TypeError:
        return None
    if isinstance(value, dict):
        value = value.get("total", value.get("forward"))
    return None if value is None else float(value)


def step_flops(
    model: torch.nn.Module, cfg, batch_one, n_clips: int, frames_per_clip: int, texts: int = 1
) -> StepFlops:
    """Model FLOPs per sample for the benchmark's step; `batch_one` is a Batch of one video."""

    def run() -> None:
        with torch.autocast(batch_one.frames.device.type, dtype=torch.bfloat16):
            model.score(model.encode_visual(batch_one.frames), batch_one.input_ids, batch_one.attention_mask)

    total, frozen = counted_forward_flops(model, run)
    declared = _model_forward_flops(cfg, n_clips, frames_per_clip, texts)
    if declared is not None and declared > 0:
        return StepFlops(declared, frozen, "forward_flops", total)
    return StepFlops(total, frozen, "FlopCounterMode", total)
