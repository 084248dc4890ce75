"""Process setup and the DeepSpeed engine: distributed init, parameter groups, the LR schedule.

AdamW with betas (0.9, 0.98); the CNN and the transformer get their own learning rate and weight decay;
biases and LayerNorm weights get no decay (as the original ClipBERT), nor does the visual-word head's
scale. The schedule is a 10% linear warm-up then a linear decay to 0, applied per group, so each group keeps
its own peak LR.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from torch import nn

from clipbert.train.config import ConfigError
from clipbert.train.logging import get_logger

REPO = Path(__file__).resolve().parents[2]
CNN_PREFIX = "cnn."  # ClipBert.cnn: backbone + grid encoder + temporal fusion


def setup_environment() -> None:
    """Env defaults that must be set before DeepSpeed builds or loads any extension."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    extensions = extensions_dir(REPO)
    if extensions is not None:
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(extensions))


def extensions_dir(repo: Path) -> Path | None:
    """Where DeepSpeed's JIT-built ops are cached: a checkout keeps them in its own .torch_extensions (as the
    Makefile does); an installed package keeps torch's default (~/.cache/torch_extensions). Why not always
    next to the package: there that is site-packages, read-only in a system or shared environment."""
    return repo / ".torch_extensions" if (repo / "setup.py").is_file() else None


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            # Why the advice: the paper configs set train.device=cuda so that a CPU machine stops here, in one
            # line, rather than running the base model at L=448 with 8 workers until it runs out of memory.
            raise ConfigError(
                "train.device=cuda but no CUDA device is visible: --set train.device=cpu runs here (the "
                "paper configs are sized for GPUs; on a CPU, ds_synthetic.json is the one that fits)"
            )
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device: torch.device) -> None:
    """gloo on CPU, nccl on GPU. A plain `python train.py` becomes a world of one."""
    import deepspeed

    from clipbert.train import launch_env

    try:  # not under deepspeed/torchrun: srun's or mpirun's ranks, else a world of one (no MPI discovery)
        launch_env.apply(os.environ)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    align_accelerator(device)
    if device.type == "cpu":
        _skip_inference_shm_build()
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")


def align_accelerator(device: torch.device) -> None:
    """Make DeepSpeed's accelerator the device this run trains on.

    Why: DeepSpeed picks its accelerator once, at first import (DS_ACCELERATOR, else what it detects: MPS on
    an Apple laptop, CUDA wherever a GPU is visible), and the engine sets that device and moves the model
    there. A CPU run beside another accelerator (`make demo` on a Mac, train.device=cpu on a GPU node) then
    failed in deepspeed.initialize or put the model where its batches are not. DS_ACCELERATOR is left as it
    was: none of the run's own processes imports DeepSpeed, and set, it outlived the run in its process's
    environment (a notebook's or a test session's) and made a later `deepspeed` launch there count its
    NUMA nodes as its devices instead of its GPUs."""
    from deepspeed.accelerator import get_accelerator, set_accelerator

    if device.type not in ("cpu", "cuda") or get_accelerator().device_name() == device.type:
        return
    before = get_accelerator().device_name()
    if device.type == "cpu":
        from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator as Accelerator
    else:
        from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator as Accelerator
    set_accelerator(Accelerator())
    get_logger().info("DeepSpeed's accelerator was %s; it runs on %s, as train.device", before, device.type)


def close_distributed() -> None:
    """Destroy the process group, and DeepSpeed's cached clone of it. Why the cache: left set, the next engine
    of the process (a second `run.main` in a notebook or a test session) broadcast its weights over the
    destroyed group and failed with "Group ... is not registered"."""
    import torch.distributed as dist
    from deepspeed.utils import groups

    if dist.is_initialized():
        dist.destroy_process_group()
    if hasattr(groups, "_WORLD_GROUP"):  # DeepSpeed's clone of the world group (groups._clone_world_group)
        groups._WORLD_GROUP = None


def _skip_inference_shm_build() -> None:
    """Why: opening the process group on a CPU, DeepSpeed JIT-builds its shared-memory all-reduce, a C++
    extension (about 35 s on 2 cores, once per environment), for its inference collectives. Training reduces
    through torch.distributed and never calls it, so mark the op incompatible and DeepSpeed skips the build
    (an inference all-reduce would then also go through torch.distributed)."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    compatible = getattr(deepspeed.ops, "__compatible_ops__", None)  # a dict DeepSpeed fills once, then reads
    if builder is not None and isinstance(compatible, dict):
        compatible[builder.NAME] = False


# Learned scales that weight decay must not touch, besides biases and LayerNorm weights. Why: the visual-word
# head's cosine temperature (as CLIP's logit scale, which CLIP leaves undecayed) was pulled toward 0 by decay,
# flattening its logits for no regularizing gain.
NO_DECAY_NAMES = ("visual_words.scale",)


def _no_decay_by_name(name: str) -> bool:
    """Biases and NO_DECAY_NAMES, also under a wrapper's prefix ('module.visual_words.scale')."""
    return any(name == n or name.endswith("." + n) for n in ("bias", *NO_DECAY_NAMES))


def param_groups(model: nn.Module, train_cfg) -> list[dict]:
    """Four groups: {cnn, transformer} x {decay, no decay}; frozen parameters are left out."""
    no_decay_ids = set()
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    groups = {
        (cnn, decay): {
            "params": [],
            "names": [],
            "lr": train_cfg.cnn_lr if cnn else train_cfg.lr,
            "weight_decay": (train_cfg.cnn_weight_decay if cnn else train_cfg.weight_decay) if decay else 0.0,
            "group": f"{'cnn' if cnn else 'transformer'}{'' if decay else '_no_decay'}",
        }
        for cnn in (True, False)
        for decay in (True, False)
    }
    seen = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:  # tied weights appear once
            continue
        seen.add(id(param))
        decay = not (_no_decay_by_name(name) or id(param) in no_decay_ids)
        group = groups[(name.startswith(CNN_PREFIX), decay)]
        group["params"].append(param)
        group["names"].append(name)
    return [g for g in groups.values() if g["params"]]


def apply_hyperparameters(optimizer, scheduler, train_cfg) -> None:
    """Set each group's LR schedule base, weight decay, betas and eps from `train_cfg`, the LR at the
    scheduler's current step. Why: a resume loads the optimizer's and the scheduler's state, whose groups
    carry the interrupted run's values, so a changed train.lr went unheeded while the new total_steps
    (the schedule's shape) took effect. Values that did not change are set to what they were, bit for bit."""
    if not all("group" in group for group in optimizer.param_groups):  # not groups this module built
        get_logger().warning("resume: optimizer groups without names; the checkpoint's settings are kept")
        return
    for group in optimizer.param_groups:
        cnn, decay = group["group"].startswith("cnn"), not group["group"].endswith("_no_decay")
        group["initial_lr"] = train_cfg.cnn_lr if cnn else train_cfg.lr
        group["weight_decay"] = (
            (train_cfg.cnn_weight_decay if cnn else train_cfg.weight_decay) if decay else 0.0
        )
        group["betas"], group["eps"] = tuple(train_cfg.betas), train_cfg.eps
    if scheduler is not None:
        scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * factor(scheduler.last_epoch)  # as LambdaLR computes it
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def warmup_linear_decay(step: int, total_steps: int, warmup_ratio: float) -> float:
    """LR multiplier at optimizer step `step` (0-based): linear 0 -> 1 over the warm-up, then 1 -> 0."""
    warmup = int(total_steps * warmup_ratio)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup))


def build_scheduler(optimizer, total_steps: int, warmup_ratio: float):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_linear_decay(step, total_steps, warmup_ratio)
    )


def replan_schedule(scheduler, total_steps: int, warmup_ratio: float) -> None:
    """Make build_scheduler's schedule end at `total_steps` (a resume that re-planned the run's length); the
    groups' LRs are set from it by apply_hyperparameters."""
    scheduler.lr_lambdas = [
        lambda step: warmup_linear_decay(step, total_steps, warmup_ratio) for _ in scheduler.lr_lambdas
    ]


def deepspeed_config(cfg, device: torch.device) -> dict:
    """The engine section with the trainer-owned keys filled in from train.*."""
    ds = copy.deepcopy(cfg.deepspeed)
    t = cfg.train
    ds["train_micro_batch_size_per_gpu"] = t.batch_size
    ds["gradient_accumulation_steps"] = t.grad_accum
    ds["gradient_clipping"] = t.grad_clip
    ds.setdefault("steps_per_print", 10**9)  # the trainer logs; keep DeepSpeed's own prints quiet
    ds.setdefault("wall_clock_breakdown", False)
    optimizer = ds.setdefault("optimizer", {"type": "AdamW"})
    params = optimizer.setdefault("params", {})
    params.update(lr=t.lr, betas=list(t.betas), eps=t.eps, weight_decay=t.weight_decay)
    params.setdefault("adam_w_mode", True)
    if device.type == "cpu":  # DeepSpeed's fused/CPU Adam kernels need a compiler + CUDA; torch's is exact
        params["torch_adam"] = True
        # torch's fused CPU AdamW updates each tensor in one vectorized pass instead of about ten: on the demo
        # config (2-core dev machine) the optimizer went from 54-59 to 17-21 ms a step, the step 12% faster.
        # DeepSpeed hands the keys it does not know to torch.optim.AdamW; torch refuses fused with foreach.
        if not params.get("foreach"):
            params.setdefault("fused", True)
    return ds


def build_engine(cfg, model: nn.Module, total_steps: int, device: torch.device):
    """deepspeed.initialize with our param groups and schedule -> (engine, optimizer, scheduler)."""
    import deepspeed

    groups = param_groups(model, cfg.train)
    for group in groups:
        group.pop("names")
    ds = deepspeed_config(cfg, device)
    model.to(device)
    # The scheduler needs the optimizer, which DeepSpeed builds: pass a factory (callable) for it.
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model,
        model_parameters=groups,
        config=ds,
        lr_scheduler=lambda opt: build_scheduler(opt, total_steps, cfg.train.warmup_ratio),
    )
    _undo_state_init_step(optimizer)
    _batchnorm_statistics_like_weights(engine.module)
    return engine, optimizer, scheduler


def _batchnorm_statistics_like_weights(module: nn.Module) -> None:
    """Give a trainable BatchNorm's running statistics its weights' dtype.

    Why: under bf16/fp16 DeepSpeed casts the parameters and leaves the buffers in fp32, and batch_norm
    refuses bf16 weights with fp32 statistics ("expected scalar type BFloat16 but found Float"): a model with
    trainable BatchNorm (model.frozen_bn=false, the tiny preset) crashed at its first step. FrozenBatchNorm
    (the paper's) casts its own statistics and is left alone."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and m.track_running_stats:
            for name in ("running_mean", "running_var"):
                buf = getattr(m, name)
                if buf is not None and buf.dtype != m.weight.dtype:
                    setattr(m, name, buf.to(m.weight.dtype))


def _undo_state_init_step(optimizer) -> None:
    """Undo the AdamW step DeepSpeed's ZeRO-0 bf16/fp16 wrapper (FP16_UnfusedOptimizer) takes on zero
    gradients when it is built, to create the optimizer state.

    Why: that step counted, so the first real update ran at Adam's step 2 and its bias correction made it
    0.74x the update of fp32 or ZeRO 1-3 (0.99x by step 10), and it applied the weight decay once at the
    peak LR. Its fp32 master weights are clones of the model's bf16 weights, which that step did not touch."""
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

    if not isinstance(optimizer, FP16_UnfusedOptimizer):
        return
    optimizer.optimizer.state.clear()  # AdamW builds it again at its first step, with step count 1
    with torch.no_grad():
        for low, master in zip(optimizer.fp16_groups, optimizer.fp32_groups):
            for param, fp32 in zip(low, master):
                fp32.copy_(param)
