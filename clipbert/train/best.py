"""Model selection on the validation split: the best evaluation's weights, in `<output_dir>/best_model`.

Why: the last step is seldom the best one. The original code saved a checkpoint at every validation and
reported the test score of the one best on val; a user of ours had to keep every checkpoint and evaluate
them all by hand. Here each evaluation of `eval.split` that beats the best so far on `eval.best_metric`
exports its weights (as the final `model/` is exported, predict.json included), and the end of training
evaluates `eval.test_split` with them as split `test_best`, besides the final weights' `test`.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from clipbert.train.config import ConfigError
from clipbert.train.logging import get_logger, is_rank0, writing

BEST_DIR = "best_model"
RECORD = "best.json"  # in BEST_DIR: {"metric", "value", "step", "split"}

# eval.best_metric=auto: the metric each task kind is usually selected on; pre-training has no single one
AUTO_METRIC = {"retrieval": "rsum", "qa": "acc", "mc": "acc", "vqa": "vqa_acc"}
_RETRIEVAL = {f"{d}_{m}" for d in ("t2v", "v2t") for m in ("r1", "r5", "r10", "medr", "meanr")} | {"rsum"}
# names each kind's evaluation reports; "acc_"/"vqa_acc_" are per answer type (acc_what, vqa_acc_yes_no)
_METRICS = {
    "retrieval": (_RETRIEVAL | {f"itm_only_{m}" for m in _RETRIEVAL}, ()),
    "qa": ({"acc"}, ("acc_",)),
    "mc": ({"acc"}, ()),
    "vqa": ({"vqa_acc"}, ("vqa_acc_",)),
    "pretrain": ({"mlm_acc", "itm_acc"}, ()),
}


def selection_metric(cfg) -> str | None:
    """The metric eval.best_metric selects on for the task, None when selection is off.

    Raises ConfigError for a metric the task's evaluation does not report (found at start-up, not after
    the first evaluation)."""
    name, kind = cfg.eval.best_metric, cfg.task.kind
    if name == "none":
        return None
    if name == "auto":
        return AUTO_METRIC.get(kind)
    exact, prefixes = _METRICS.get(kind, (set(), ()))
    if name not in exact and not name.startswith(prefixes):
        known = ", ".join(sorted(exact) + [f"{p}<answer type>" for p in prefixes]) or "none"
        raise ConfigError(
            f"eval.best_metric={name!r}: task.name={cfg.task.name} ({kind}) reports no such metric; "
            f"one of: auto, none, {known}"
        )
    return name


def lower_is_better(metric: str) -> bool:
    return metric.endswith(("medr", "meanr"))  # ranks: 1 is the best


def beats(value: float, best: dict, metric: str) -> bool:
    """Whether `value` of `metric` improves on the recorded best (ties keep the earlier step)."""
    if not best or best.get("metric") != metric:
        return True
    return value < best["value"] if lower_is_better(metric) else value > best["value"]


def export_best(export, directory: Path, record: dict) -> None:
    """Replace `directory` by the weights `export(path)` writes, with `record` as best.json."""

    def write(staging: Path) -> None:
        export(staging)
        if is_rank0():
            (staging / RECORD).write_text(json.dumps(record, indent=1) + "\n")

    replace_dir(write, directory)


def replace_dir(write, directory: Path) -> None:
    """Replace `directory` by what `write(path)` writes there: best_model/ and the final model/.

    A stop or a failed write (a full disk) must not leave half a model, which predict would load: the new one
    is written beside the old one and renamed over it; `write` is collective (ZeRO-3 gathers), the file moves
    are rank 0's. A failed write raises WriteError naming `directory`."""
    staging = directory.with_name(directory.name + ".tmp")
    if is_rank0() and staging.exists():
        shutil.rmtree(staging)
    _barrier()
    with writing(staging, f"{directory} (through {staging.name})", then=f"; {directory} is left as it was"):
        write(staging)
    if is_rank0():
        old = directory.with_name(directory.name + ".old")
        if old.exists():  # left by a stop during an earlier swap's clean-up: the rename below needs its name
            shutil.rmtree(old)
        if directory.exists():
            directory.rename(old)
        staging.rename(directory)
        if old.exists():
            shutil.rmtree(old)
    _barrier()


def read_record(directory: Path) -> dict | None:
    """best.json of a best_model dir; None when there is none or it cannot be read."""
    try:
        record = json.loads((directory / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def reconcile(directory: Path, chosen: dict) -> None:
    """Keep best_model/ only if it holds `chosen`, the selection a resumed checkpoint (or a fresh run: {})
    knows of. Why: an export after the checkpoint is from the part of the run that will be run again (the
    logs after the checkpoint are dropped too), and a fresh run's best model must be its own. The run
    again exports what it selects; the warning says so. Rank 0's files."""
    if not is_rank0() or not directory.exists():
        return
    record = read_record(directory)
    if chosen and record == chosen:
        return
    shutil.rmtree(directory)
    at = f"step {record['step']}" if record and "step" in record else "an unknown step"
    get_logger().warning(
        "%s (%s) is not the best model this run knows of (%s): removed; it is exported again when an "
        "evaluation selects it",
        directory,
        at,
        f"step {chosen['step']}" if chosen else "none yet",
    )


def load_into(engine, directory: Path) -> None:
    """The weights of a save_pretrained dir into the engine's module, on every rank (any ZeRO stage)."""
    from safetensors.torch import load_file

    from clipbert.models.clipbert import WEIGHTS_NAME

    state = load_file(str(directory / WEIGHTS_NAME))
    module = engine.module
    if engine.zero_optimization_partition_weights():
        import deepspeed

        # every rank loads (buffers are not partitioned); modifier_rank=0 scatters rank 0's parameters
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=0):
            module.load_state_dict(state, strict=True)
    else:
        module.load_state_dict(state, strict=True)


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
