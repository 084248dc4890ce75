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
