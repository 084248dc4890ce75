"""Model FLOPs of one training step, for MFU.

Convention (as in PaLM/nanoGPT MFU): a step costs 3x the forward FLOPs of the trainable parts (forward,
input gradient, weight gradient) plus 1x the forward FLOPs of frozen parts (stem and res2 under
FREEZE_AT=2 get no backward). Recomputation by activation checkpointing is not model work and is not
counted, so checkpointing lowers MFU honestly.

The forward count and its frozen share come from the model package's analytic count
(`clipbert.models.flops`) when it has one, so a step counts what `clipbert.models.training_flops` counts for
the trainer, on every path alike; torch's FlopCounterMode (matmul/conv/attention FLOPs, 2 per multiply-add)
counts one sample as the cross-check, and is the count (with its per-module frozen share) without one.
"""

from __future__ import annotations

import dataclasses

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


def _frozen_roots(model: torch.nn.Module) -> set[int]:
    """ids of the largest submodules that have parameters, none of them trainable."""
    roots: set[int] = set()

    def visit(module: torch.nn.Module) -> None:
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            roots.add(id(module))
            return
        for child in module.children():
            visit(child)

    visit(model)
    return roots


def _names_as_counted(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """FlopCounterMode names a module `<class of the first module entered>.<path below it>`; the entry is
    whichever submodule the run called first (e.g. `VisualEncoder.backbone.conv1` when the model's method
    calls self.cnn), so list every such spelling."""
    names: dict[str, torch.nn.Module] = {}
    for _, top in model.named_modules():
        head = type(top).__name__
        for rel, module in top.named_modules():
            names.setdefault(f"{head}.{rel}" if rel else head, module)
    return names


def counted_forward_flops(model: torch.nn.Module, run_forward) -> tuple[float, float]:
    """(total, frozen) forward FLOPs of `run_forward()` by FlopCounterMode, without autograd."""
    roots = _frozen_roots(model)
    names = _names_as_counted(model)
    with torch.no_grad(), FlopCounterMode(display=False, depth=None) as counter:
        run_forward()
    counts = {name: float(sum(ops.values())) for name, ops in counter.get_flop_counts().items()}
    frozen = sum(c for name, c in counts.items() if name in names and id(names[name]) in roots)
    return counts.get("Global", 0.0), frozen


def _model_flops(cfg, n_clips: int, frames_per_clip: int, texts: int) -> tuple[float, float] | None:
    """(forward, frozen forward) FLOPs per sample from the model package's analytic count, if it has one.

    Both come from the configuration, not the module tree, so every path of one configuration counts the
    same model FLOPs: the stem rewrites and fuse_frozen (clipbert/perf/stem.py, frozen_fuse.py) keep the
    frozen weights as buffers, where the module walk found no frozen parameters and counted their forward
    3x (+9% for the base preset's +fuse_frozen step), and the padded stems' extra products are no model
    work. The forward counts train-mode pixel random sampling, as the benchmark's step runs it: together
    this is clipbert.models.training_flops, the trainer's count.
    """
    try:
        from clipbert.models.flops import backbone_stage_flops, forward_flops
    except ImportError:
        return None
    # make_batch's texts are cfg.max_text_len tokens long
    forward = forward_flops(cfg, n_clips, frames_per_clip, cfg.max_text_len, texts, pixel_sampling=True)
    stages, _ = backbone_stage_flops(cfg, cfg.image_size)
    frozen = n_clips * frames_per_clip * sum(stages[: cfg.freeze_at])  # stem..res{freeze_at}: no backward
    return float(forward), float(frozen)


def step_flops(
    model: torch.nn.Module, cfg, batch_one, n_clips: int, frames_per_clip: int, texts: int = 1
) -> StepFlops:
    """Model FLOPs per sample for the benchmark's step; `batch_one` is a Batch of one video."""

    def run() -> None:
        with torch.autocast(batch_one.frames.device.type, dtype=torch.bfloat16):
            model.score(model.encode_visual(batch_one.frames), batch_one.input_ids, batch_one.attention_mask)

    total, frozen = counted_forward_flops(model, run)
    declared = _model_flops(cfg, n_clips, frames_per_clip, texts)
    if declared is not None and declared[0] > 0:
        return StepFlops(*declared, "forward_flops", total)
    return StepFlops(total, frozen, "FlopCounterMode", total)
