"""Checkpoints: DeepSpeed engine state + trainer position + every RNG state; resume; SIGTERM; weights.

Layout: <output_dir>/checkpoints/step_<N>/ (DeepSpeed's files, `trainer_state.json`, `rng_rank<r>.pt`)
and DeepSpeed's `latest` file naming the newest complete tag. A tag is never rewritten: a new checkpoint
gets a new directory and `latest` moves only after every rank has written, so an interrupted save or a
bad state can never replace the last good checkpoint. A resume from an older checkpoint moves the newer ones
aside (checkpoints/abandoned_after_<tag>/).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from clipbert.train.config import ConfigError
from clipbert.train.logging import get_logger, is_rank0, rank, writing

LATEST = "latest"
STATE_FILE = "trainer_state.json"


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # One state per GPU the saving process saw: a resume that sees fewer (a checkpoint of an 8-GPU node
        # resumed on one GPU) restores the GPUs it has; set_rng_state_all raised IndexError past them.
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def seed_everything(seed: int) -> None:
    """Each rank gets its own stream (dropout differs across data-parallel ranks, as it should)."""
    seed = seed + rank()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save(engine, output_dir: str | Path, trainer_state: dict, keep: int) -> Path:
    """Write a new checkpoint tag for trainer_state['step'], then prune to the newest `keep`."""
    root = checkpoint_root(output_dir)
    tag = tag_for(trainer_state["step"])
    tag_dir = root / tag
    if (root / LATEST).is_file() and (root / LATEST).read_text().strip() == tag:
        get_logger().info("checkpoint %s already exists; not rewriting it", tag_dir)
        return tag_dir
    # a failed write names the checkpoint and what is left: `latest` still names the last complete one
    left = _untouched(root)
    with writing(tag_dir, f"checkpoint {tag_dir}", then=left):
        tag_dir.mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), tag_dir / f"rng_rank{rank()}.pt")
        if is_rank0():
            (tag_dir / STATE_FILE).write_text(json.dumps(trainer_state, indent=1, sort_keys=True))
    if dist.is_initialized():
        dist.barrier()
    # Why save_latest=False: DeepSpeed's rank 0 writes `latest` when its own files are done and only then
    # waits at a barrier, so other ranks may still be writing their ZeRO shards; a kill in that window
    # (the SIGKILL after a SIGTERM) left `latest` naming a tag that cannot be loaded.
    with writing(tag_dir, f"checkpoint {tag_dir}", then=left):
        engine.save_checkpoint(
            str(root), tag=tag, client_state={"trainer_state": trainer_state}, save_latest=False
        )
    if dist.is_initialized():  # every rank has written its files (DeepSpeed's own barrier, said again)
        dist.barrier()
    if is_rank0():
        write_latest(root, tag, then=left)
        _prune(root, keep)
    if dist.is_initialized():
        dist.barrier()
    get_logger().info("saved checkpoint %s", tag_dir)
    return tag_dir


def _untouched(root: Path) -> str:
    """What a failed save leaves to resume from, for its error message."""
    named = (root / LATEST).read_text().strip() if (root / LATEST).is_file() else ""
    return f"; the last complete checkpoint, {named}, is untouched" if named else f"; {LATEST} names none yet"


def write_latest(root: Path, tag: str, then: str = "") -> None:
    """Point `latest` at tag atomically: a kill mid-write must leave the old name, not an empty file. A failed
    write raises WriteError (`then` says what it leaves)."""
    tmp = root / f"{LATEST}.tmp"
    with writing(root / LATEST, f"{root / LATEST} (naming {tag})", then=then):
        with open(tmp, "w") as f:
            f.write(tag)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, root / LATEST)


def _prune(root: Path, keep: int) -> None:
    tags = sorted(p for p in root.glob("step_*") if p.is_dir())
    latest = (root / LATEST).read_text().strip() if (root / LATEST).exists() else None
    for old in tags[:-keep]:
        if old.name != latest:
            shutil.rmtree(old, ignore_errors=True)


def set_aside_newer(output_dir: str | Path, step: int) -> None:
    """Move this run's checkpoints newer than the resumed `step` to checkpoints/abandoned_after_<tag>/.

    Why: they belong to a run that is being abandoned (a resume from an older checkpoint, e.g. from before a
    divergence). Left in place, pruning, which keeps the newest tags, would delete the new run's checkpoints
    instead of them, and a new checkpoint could land in one of their directories. Nothing is deleted. Call
    on every rank: rank 0 moves, the others wait."""
    if is_rank0():  # only rank 0 looks and moves: another rank could look after the move
        _move_newer(checkpoint_root(output_dir), step)
    if dist.is_initialized():
        dist.barrier()


def _move_newer(root: Path, step: int) -> None:
    newer = sorted(p for p in root.glob("step_*") if p.is_dir() and _tag_step(p.name) > step)
    if not newer:
        return
    dest, k = root / f"abandoned_after_{tag_for(step)}", 1
    while dest.exists():  # abandoned at this step before
        dest, k = root / f"abandoned_after_{tag_for(step)}_{k}", k + 1
    dest.mkdir()
    for path in newer:
        path.rename(dest / path.name)
    latest = root / LATEST
    if latest.is_file() and (dest / latest.read_text().strip()).exists():
        # `latest` named a moved tag: it names the resumed one where that is here, else none until a save
        if (root / tag_for(step)).is_dir():
            write_latest(root, tag_for(step))
        else:
            latest.unlink()
    get_logger().warning(
        "resume from step %d: moved the %d newer checkpoint(s) of the abandoned run (%s..%s) to %s",
        step,
        len(newer),
        newer[0].name,
        newer[-1].name,
        dest,
    )


def _tag_step(name: str) -> int:
    digits = name.removeprefix("step_")
    return int(digits) if digits.isdigit() else -1


def find_resume(resume: str, output_dir: str | Path) -> tuple[Path, str] | None:
    """(checkpoint root, tag) to resume from: '' = none, 'auto' = the newest complete one in output_dir, or a
    path (which must be complete)."""
    if not resume:
        return None
    if resume == "auto":
        # rank 0 decides for all: the resume moves newer tags aside and rewrites `latest` (set_aside_newer),
        # which another rank still looking would see half done. Its error goes to every rank too (no hang).
        try:
            found = newest_complete(checkpoint_root(output_dir)) if is_rank0() else None
        except FileNotFoundError as err:
            found = err
        if dist.is_initialized() and dist.get_world_size() > 1:
            box = [found]
            dist.broadcast_object_list(box, src=0)
            found = box[0]
        if isinstance(found, FileNotFoundError):
            raise found
        return found
    root, tag = locate(resume, key="train.resume")
    problem = incomplete(root / tag)
    if problem:
        raise FileNotFoundError(f"train.resume={resume!r}: checkpoint {root / tag} is incomplete: {problem}")
    return root, tag


def newest_complete(root: Path) -> tuple[Path, str] | None:
    """train.resume=auto: the newest complete checkpoint (`incomplete`) at or before the one `latest` names,
    with a warning that names each newer one passed over and why.

    Why not `latest` alone: a checkpoint can lose a file or have one cut short after `latest` moved to it (a
    full disk, a node lost before its writes reached the disk, a clean-up), and `latest` itself can be gone
    or name a missing tag. Resuming then failed with DeepSpeed's bare AssertionError or a misleading "does not
    fit this model", went on without its RNG states, or, without `latest`, started over from step 0, dropping
    the logs and overwriting the checkpoints there. Tags newer than `latest` are saves that did not finish.
    Without `latest`, the newest complete tag is taken (a first save may have been stopped before writing
    it); with no complete tag at all the run starts over, as one stopped before its first checkpoint. If
    `latest` exists and nothing complete is left, that is an error: the run must not silently start again."""
    named = (root / LATEST).read_text().strip() if (root / LATEST).is_file() else None
    tags = sorted(
        (p.name for p in root.glob("step_*") if p.is_dir() and _tag_step(p.name) >= 0), key=_tag_step
    )
    skipped = []
    if named is not None and named not in tags:
        skipped.append(f"{named or '(empty)'} named by {LATEST}: no such checkpoint directory")
    limit = _tag_step(named) if named and _tag_step(named) >= 0 else None
    for tag in reversed(tags):
        if limit is not None and _tag_step(tag) > limit:
            skipped.append(f"{tag}: newer than {LATEST} ({named}), a save that did not finish")
            continue
        problem = incomplete(root / tag)
        if problem:
            skipped.append(f"{tag}: {problem}")
            continue
        if skipped or named is None:
            why = "; ".join(skipped) if skipped else f"no {LATEST} file"
            get_logger().warning(
                "train.resume=auto: resuming from %s, the newest complete checkpoint (%s)", tag, why
            )
        return root, tag
    if named is None:  # no checkpoint ever completed here: the run starts over (run.py drops its logs)
        if tags:
            get_logger().warning(
                "train.resume=auto: no complete checkpoint in %s (%s), starting fresh",
                root,
                "; ".join(skipped),
            )
        else:
            get_logger().info("train.resume=auto: no checkpoint in %s, starting fresh", root)
        return None
    raise FileNotFoundError(
        f"train.resume=auto: no complete checkpoint in {root} ({'; '.join(skipped)}). Resume from a copy "
        "with train.resume=<checkpoint dir>, or start over in a new train.output_dir"
    )


# DeepSpeed's files of one data-parallel rank each:
# [bf16_]zero_pp_rank_<r>_mp_rank_<m>_{model,optim}_states.pt
_PER_RANK = re.compile(r"^(.*zero_pp_rank_)(\d+)(_mp_rank_\d+_\w+_states\.pt)$")


def incomplete(tag_dir: Path) -> str | None:
    """Why the checkpoint `tag_dir` cannot be resumed as saved, or None when it is complete: its
    trainer_state.json, DeepSpeed's model states, the RNG states and ZeRO files of every rank that saved it,
    and every torch file whole (a zip archive, whose directory is written last). Cheap: nothing is loaded."""
    if not tag_dir.is_dir():
        return "no such directory"
    try:
        state = json.loads((tag_dir / STATE_FILE).read_text())
        world = int(state.get("plan", {}).get("world_size", 1))
    except FileNotFoundError:
        return f"no {STATE_FILE}"
    except (ValueError, AttributeError, TypeError):
        return f"{STATE_FILE} is cut short or not valid"
    files = {p.name for p in tag_dir.glob("*.pt")}
    if not any(name.endswith("model_states.pt") for name in files):
        return "no DeepSpeed model states (*model_states.pt)"
    expected = {f"rng_rank{r}.pt" for r in range(world)}
    for name in files:
        if match := _PER_RANK.match(name):
            expected |= {f"{match[1]}{r}{match[3]}" for r in range(world)}
    missing = sorted(expected - files)
    if missing:
        return f"missing {', '.join(missing[:4])}" + (
            f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        )
    for name in sorted(files):
        if not zipfile.is_zipfile(tag_dir / name):
            return f"{name} is cut short (not a whole torch file)"
    return None


def step_of(path: str | Path) -> int | None:
    """The optimizer step of a trainer checkpoint (its trainer_state.json); None for an exported model dir."""
    try:
        root, tag = locate(path, key="eval.checkpoint")
        return int(json.loads((root / tag / STATE_FILE).read_text())["step"])
    except (FileNotFoundError, KeyError, ValueError):
        return None


def locate(path: str | Path, key: str) -> tuple[Path, str]:
    """A checkpoint given as a tag dir, a checkpoints/ dir with `latest`, or an output_dir."""
    path = Path(path)
    if not path.exists():  # a stage not run yet, a typo, or a path relative to another directory
        raise FileNotFoundError(f"{key}={str(path)!r} does not exist (relative to {Path.cwd()})")
    if (path / STATE_FILE).is_file():
        return path.parent, path.name
    for root in (path, checkpoint_root(path)):
        if (root / LATEST).is_file():
            return root, (root / LATEST).read_text().strip()
    raise FileNotFoundError(
        f"{key}={str(path)!r}: no trainer checkpoint there (no {STATE_FILE} or {LATEST} file)"
    )


def load(engine, root: Path, tag: str) -> dict:
    """Restore engine + optimizer + scheduler + this rank's RNG; returns the trainer state."""
    try:
        load_path, client = engine.load_checkpoint(str(root), tag=tag)
    except RuntimeError as err:  # e.g. a checkpoint of another model config in the same output_dir
        raise RuntimeError(
            f"train.resume: checkpoint {root / tag} does not fit this model ({str(err).strip()}). "
            "Use a new train.output_dir, or train.resume='' to start over."
        ) from err
    if load_path is None:
        raise FileNotFoundError(f"DeepSpeed could not load checkpoint {root / tag}")
    rng_file = root / tag / f"rng_rank{rank()}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    # Said by rank 0, for every rank: only rank 0 logs warnings, and a resume on more processes than saved
    # the checkpoint leaves the new ranks without one (their warning went unseen)
    world = dist.get_world_size() if dist.is_initialized() else 1
    missing = [r for r in range(world) if not (root / tag / f"rng_rank{r}.pt").is_file()]
    if missing:
        get_logger().warning(
            "%s has no RNG state for rank(s) %s (saved by fewer processes?): they go on with fresh random "
            "streams (dropout, frame sampling), so the run does not repeat one of the saved world size",
            root / tag,
            ", ".join(map(str, missing)),
        )
    get_logger().info("resumed from %s", root / tag)
    return client["trainer_state"]


def saved_zero_stage(tag_dir: Path, plan: dict) -> int | None:
    """The ZeRO stage a checkpoint was saved under: its plan's (loop.Trainer.plan), else read off DeepSpeed's
    file names for checkpoints from before the plan had it: per-rank model states are ZeRO-3's, per-rank
    optimizer states ZeRO-1/2's (one layout, told as 1). None when the names do not say (bf16's files)."""
    if "zero_stage" in plan:
        return int(plan["zero_stage"])
    names = [p.name for p in tag_dir.glob("*.pt")]
    if any(_PER_RANK.match(n) and n.endswith("model_states.pt") for n in names):
        return 3
    if any(_PER_RANK.match(n) and n.startswith("zero_pp_rank_") for n in names):
        return 1
    if any(n.startswith("bf16_") for n in names):
        return None
    return 0


def _zero_layout(stage: int) -> str:
    # ZeRO-1 and 2 save the same partitioned optimizer state; ZeRO-3's is another; ZeRO-0 has none
    return {0: "unpartitioned", 1: "partitioned", 2: "partitioned"}.get(stage, "partitioned parameters")


def _agreed(problem: str | None) -> None:
    """Raise ConfigError(problem) as rank 0 found it, on every rank. Why rank 0's: ranks that looked at the
    files apart (node-local disks) could decide apart, and one going on into DeepSpeed's collectives while
    another raised would hang the run."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [problem if is_rank0() else None]
        dist.broadcast_object_list(box, src=0)
        problem = box[0]
    if problem:
        raise ConfigError(problem)


def check_engine_layout(engine, root: Path, tag: str, world: int) -> None:
    """Refuse, before DeepSpeed loads, a checkpoint whose optimizer state this engine cannot take: one saved
    under a ZeRO stage of another layout, or one whose ZeRO state is partitioned over another world size.

    Why: DeepSpeed failed on these with errors that name nothing (ZeRO-2 -> 0: "'NoneType' object has no
    attribute 'copy'"; 2 <-> 3: a bare AssertionError; 0 -> 2: a missing *optim_states.pt) or with a
    traceback about "DP world size" that says nothing of what to do."""
    _agreed(_engine_layout_problem(engine, root, tag, world) if is_rank0() else None)


def _engine_layout_problem(engine, root: Path, tag: str, world: int) -> str | None:
    plan = saved_plan(root, tag)
    saved, now = saved_zero_stage(root / tag, plan), engine.zero_optimization_stage()
    warm_start = (
        f"or start a new run from its weights: train.init_checkpoint={root / tag} in a new "
        "train.output_dir (the optimizer state and the data position start over)"
    )
    if saved is not None and _zero_layout(saved) != _zero_layout(now):
        if (saved == 3) != (now == 3):  # ZeRO-3's weights are per rank: no other stage reads them (below)
            warm_start = "or start from the finished run's exported model/ directory (train.init_checkpoint)"
        return (
            f"train.resume: checkpoint {root / tag} was saved under ZeRO-{saved}, this run's "
            f"deepspeed.zero_optimization.stage is {now}: DeepSpeed cannot load the optimizer state of one "
            f"into the other. Resume it with --set deepspeed.zero_optimization.stage={saved}, {warm_start}"
        )
    saved_world = int(plan.get("world_size", world))
    partitioned = any(_PER_RANK.match(p.name) for p in (root / tag).glob("*optim_states.pt"))
    if partitioned and saved_world != world and not engine.load_universal_checkpoint():
        return (
            f"train.resume: checkpoint {root / tag} was saved by {saved_world} process(es), this run has "
            f"{world}: DeepSpeed cannot re-partition its per-rank optimizer state (ZeRO-{now}) to another "
            f"world size. Resume it with {saved_world} processes (torchrun --nproc_per_node ..., as it was "
            f"launched), {warm_start}. (ZeRO-0 without bf16 saves one optimizer file: any world resumes it.)"
        )
    return None


def saved_model_config(root: Path, tag: str) -> dict | None:
    """The model config a trainer checkpoint recorded (its trainer state's "model"); None for checkpoints
    written before it was recorded."""
    try:
        return json.loads((root / tag / STATE_FILE).read_text()).get("model") or None
    except (FileNotFoundError, ValueError):
        return None


def saved_plan(root: Path, tag: str) -> dict:
    """The plan a trainer checkpoint recorded (its trainer state's "plan": loop.Trainer.plan), or {}."""
    try:
        return json.loads((root / tag / STATE_FILE).read_text()).get("plan") or {}
    except (FileNotFoundError, ValueError):
        return {}


def check_model_config(saved: dict | None, model_cfg, key: str, path: str | Path) -> None:
    """Refuse a checkpoint whose model disagrees with this config on a key its weights are tied to
    (models.config.WEIGHT_KEYS): some of those load without a shape error and compute something else."""
    if not saved:
        return
    diffs = model_cfg.weight_key_differences(saved)
    if diffs:
        shown = "; ".join(
            f"model.{k}: checkpoint {json.dumps(a)}, config {json.dumps(b)}" for k, a, b in diffs
        )
        fix = " ".join(f"--set model.{k}={json.dumps(a, separators=(',', ':'))}" for k, a, _ in diffs)
        raise ConfigError(
            f"{key}={str(path)!r}: the checkpoint was trained with another model ({shown}). Its weights "
            f"only mean what they did with its settings: give the model.preset it was trained with, or {fix}"
        )


def is_pretrained_dir(path: str | Path) -> bool:
    from clipbert.models.clipbert import CONFIG_NAME, WEIGHTS_NAME

    return (Path(path) / CONFIG_NAME).is_file() and (Path(path) / WEIGHTS_NAME).is_file()


TASK_HEAD = "classifier."  # ClipBert's task head: its class count is the task's (itm 2, mc 1, qa answers)


def load_pretrained_weights(
    model: torch.nn.Module, path: str | Path, key: str, new_head: bool = False
) -> None:
    """Weights of a ClipBert.save_pretrained dir into `model` (before the engine exists).

    new_head: fine-tuning (train.init_checkpoint) may start a task whose head has another class count than
    the checkpoint's (VQA's 3,129 answers from pre-training's 2-way matching head), as the paper fine-tunes
    every task from the image-text pre-trained weights: that head keeps its fresh initialization, with a
    warning. Any other shape mismatch, and any at all when evaluating, is an error.
    """
    from safetensors.torch import load_file

    from clipbert.models.clipbert import CONFIG_NAME, WEIGHTS_NAME

    try:
        saved = json.loads((Path(path) / CONFIG_NAME).read_text())
    except ValueError as err:
        raise ConfigError(f"{key}={str(path)!r}: {CONFIG_NAME} is not valid JSON ({err})") from err
    check_model_config(saved, model.config, key, path)
    state = load_file(str(Path(path) / WEIGHTS_NAME))
    if getattr(model, "visual_words", None) is None:  # a training-only head: its weights are not needed
        state = {k: v for k, v in state.items() if not k.startswith("visual_words.")}
    own = model.state_dict()
    reshaped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if new_head and reshaped and all(k.startswith(TASK_HEAD) for k in reshaped):
        shapes = ", ".join(f"{k} {list(state[k].shape)} -> {list(own[k].shape)}" for k in reshaped)
        get_logger().warning("%s=%r: a new task head, freshly initialized (%s)", key, str(path), shapes)
        state = {k: v for k, v in state.items() if k not in reshaped}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if k not in reshaped]
    elif reshaped:
        shapes = ", ".join(f"{k} {list(state[k].shape)} vs {list(own[k].shape)}" for k in reshaped[:8])
        raise ConfigError(f"{key}={str(path)!r}: checkpoint and model shapes differ: {shapes}")
    else:
        missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{key}={str(path)!r}: missing keys {missing[:8]}, unexpected keys {unexpected[:8]}"
        )
    get_logger().info("loaded weights from %s", path)


def load_module_only(engine, path: str | Path, key: str) -> None:
    """Weights only (no optimizer/scheduler/position) from a trainer checkpoint, for any ZeRO stage."""
    root, tag = locate(path, key)
    check_model_config(saved_model_config(root, tag), engine.module.config, key, root / tag)
    _agreed(_module_layout_problem(engine, root / tag, key, path) if is_rank0() else None)
    try:
        load_path, _ = engine.load_checkpoint(
            str(root),
            tag=tag,
            load_module_only=True,
            load_optimizer_states=False,
            load_lr_scheduler_states=False,
        )
    except RuntimeError as err:
        if "size mismatch" not in str(err):
            raise
        # torch lists every mismatched tensor (hundreds of lines for another preset): the first few say it
        lines = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
        shown = "; ".join(lines[:4]) + (f"; and {len(lines) - 4} more" if len(lines) > 4 else "")
        hint = (
            "To fine-tune another task from it, point the key at the run's exported model/ directory: a task "
            "head of another size then starts fresh"
            if key == "train.init_checkpoint"
            else "Evaluate it with the model settings (model.preset and overrides) it was trained with"
        )
        raise ConfigError(
            f"{key}={str(path)!r}: the checkpoint's shapes differ from this model's: {shown}. {hint}"
        ) from err
    if load_path is None:
        raise FileNotFoundError(f"{key}={str(path)!r}: DeepSpeed could not load {root / tag}")
    get_logger().info("loaded weights from checkpoint %s", root / tag)


def _module_layout_problem(engine, tag_dir: Path, key: str, path) -> str | None:
    """Why DeepSpeed cannot read a trainer checkpoint's weights under this engine's ZeRO stage, or None.

    ZeRO-3 saves them per rank (zero_pp_rank_<r>_..._model_states.pt), the other stages in one file; each
    engine reads only its own kind. Why: it failed with a bare AssertionError from DeepSpeed's file lookup."""
    names = [p.name for p in tag_dir.glob("*model_states.pt")]
    saved_z3 = any(_PER_RANK.match(n) for n in names)
    if not names or saved_z3 == bool(engine.zero_optimization_partition_weights()):
        return None
    saved = "ZeRO-3" if saved_z3 else "ZeRO-0, 1 or 2"
    stage = "3" if saved_z3 else "0, 1 or 2"
    return (
        f"{key}={str(path)!r}: a {saved} trainer checkpoint ({tag_dir}), but this run's "
        f"deepspeed.zero_optimization.stage is {engine.zero_optimization_stage()}: DeepSpeed reads those "
        f"weights only under ZeRO stage {stage} (any world size). Set that stage, or give {key} the finished "
        "run's exported model/ directory, which every stage loads"
    )


def export_pretrained(engine, directory: str | Path) -> None:
    """ClipBert.save_pretrained of the engine's module (ZeRO-3 parameters are gathered first)."""
    module = engine.module
    if engine.zero_optimization_partition_weights():
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            if is_rank0():
                module.save_pretrained(directory)
    elif is_rank0():
        module.save_pretrained(directory)
    if dist.is_initialized():
        dist.barrier()


class StopSignal:
    """SIGTERM/SIGINT set a flag; the loop checks it between steps, saves a checkpoint and exits."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.requested = True
        get_logger().warning(
            "received %s: will checkpoint and exit after this step", signal.Signals(signum).name
        )

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
