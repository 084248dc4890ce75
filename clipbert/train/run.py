"""`train.py`'s body: parse arguments, build config, model, data and engine, then train or evaluate.

deepspeed train.py --config ds_msrvtt.json [--set section.key=value ...]
python train.py --config ds_synthetic.json            # one process, no launcher
torchrun --nproc_per_node 2 train.py --config ...
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from clipbert.data.annotations import DataError
from clipbert.train import best, launch_env
from clipbert.train import checkpoint as ckpt
from clipbert.train import config as C
from clipbert.train.cli import parse_args
from clipbert.train.engine import (
    build_engine,
    close_distributed,
    init_distributed,
    pick_device,
    setup_environment,
)
from clipbert.train.logging import RunLog, get_logger, is_rank0, is_write_failure, replace_text
from clipbert.train.loop import Trainer, TrainingDiverged, total_training_steps
from clipbert.train.metrics import format_table
from clipbert.train.output_lock import exclusive_output_dir
from clipbert.train.rank_checks import agree_to_start, check_inputs_on_every_rank, check_shared_output_dir

STOPPED = 130  # exit code of a run stopped by SIGTERM or Ctrl-C after its checkpoint
WRITE_FAILED = 4  # exit code of a run stopped by a write that failed (a full disk, an I/O error)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def build_model(cfg, model_cfg):
    from clipbert.models import ClipBert

    model = ClipBert(model_cfg)
    if cfg.model.init_bert_from:  # pretrained BERT weights for the transformer (the CNN stays as built)
        from clipbert.models.weights import load_hf_bert

        try:
            load_hf_bert(model, cfg.model.bert_dir())
        except (OSError, ValueError, KeyError, RuntimeError) as err:  # as init_cnn_from: name the key
            raise C.ConfigError(f"model.init_bert_from={cfg.model.init_bert_from!r}: {err}") from err
    if cfg.model.init_cnn_from:  # ImageNet ResNet weights for the backbone
        from clipbert.models.weights import load_resnet

        where = f"model.init_cnn_from={cfg.model.init_cnn_from!r}"
        # load_resnet rejects files without ResNet names, so a loaded CNN always got tensors
        try:
            load_resnet(model, cfg.model.init_cnn_from)
        except Exception as err:  # unreadable file, unknown naming, shape mismatch: name the config key
            raise C.ConfigError(f"{where}: {err}") from err
    if cfg.train.compile == "cnn":
        model.compile_cnn()
    elif cfg.train.compile == "full":
        model.compile_full()
    init = cfg.eval.checkpoint if cfg.eval.only else cfg.train.init_checkpoint
    key = "eval.checkpoint" if cfg.eval.only else "train.init_checkpoint"
    if init and ckpt.is_pretrained_dir(init):
        ckpt.load_pretrained_weights(model, init, key, new_head=not cfg.eval.only)
    return model, (init if init and not ckpt.is_pretrained_dir(init) else ""), key


def resolved_model_config(cfg, data):
    extra = {"num_answers": data.num_answers()} if cfg.task.kind in C.ANSWER_KINDS else {}
    return cfg.model_config(**extra)


def write_resolved_config(cfg, model_cfg, out: Path) -> None:
    """config.json for a training run; eval_config.json for eval.only, which often shares the output_dir of
    the run it evaluates and must not replace that run's record."""
    if is_rank0():
        out.mkdir(parents=True, exist_ok=True)
        resolved = {**cfg.to_dict(), "resolved_model": model_cfg.to_dict()}
        name = "eval_config.json" if cfg.eval.only else "config.json"
        replace_text(out / name, json.dumps(resolved, indent=2, default=str) + "\n")


def refuse_previous_run(cfg, out: Path) -> None:
    """A fresh training run into an output_dir that holds another run's steps or checkpoints would interleave
    its logs, checkpoints and exported model with that run's: an error, which says how to continue it. Into
    eval.only's record alone (metrics.jsonl), a fresh run and a resume=auto are refused too."""
    # (resume=auto without a checkpoint starts over a run that saved none: _train drops its logs)
    if cfg.eval.only or cfg.train.resume not in ("", "auto"):
        return
    found = ["steps.jsonl"] if (out / "steps.jsonl").is_file() else []
    tags = sorted(p.name for p in ckpt.checkpoint_root(out).glob("step_*"))
    if tags:
        found.append(f"checkpoints up to {tags[-1]}")
    if cfg.train.resume == "auto":
        # no training run wrote here (it writes config.json at its start, before any evaluation), so
        # metrics.jsonl is eval.only's: resume=auto would start over, and its rewind to step 0 dropped the
        # rows of evaluated checkpoints (step > 0) without a word, while an exported model's joined its own
        if not found and (out / "metrics.jsonl").is_file() and not (out / "config.json").is_file():
            raise C.ConfigError(_evaluations_of_other_weights(out))
        return
    if found:
        raise C.ConfigError(
            f"train.output_dir={str(out)!r} holds a previous run ({', '.join(found)}): continue it with "
            "--set train.resume=auto, or give a new train.output_dir (or remove that one)"
        )
    # eval.only's record alone (metrics.jsonl): this run's evaluations would join those of other weights
    if (out / "metrics.jsonl").is_file():
        raise C.ConfigError(_evaluations_of_other_weights(out))


def _evaluations_of_other_weights(out: Path) -> str:
    return (
        f"train.output_dir={str(out)!r} holds evaluations of other weights (metrics.jsonl, as eval.only "
        "writes it), which this run's would join: give a new train.output_dir (or move the file away)"
    )


def run(cfg, device: torch.device, data_factory=None) -> dict:
    """Train (or evaluate, with eval.only) as configured; returns a summary dict (rank 0's view)."""
    start = time.time()
    ckpt.seed_everything(cfg.train.seed)
    if cfg.task.kind == "mc_itm" and not cfg.eval.only:
        raise C.ConfigError(
            f"task.name={cfg.task.name} is evaluated with a retrieval checkpoint: set eval.only=true and "
            "eval.checkpoint (train it as task.name=msrvtt_ret)"
        )
    out = Path(cfg.train.output_dir)
    if not cfg.eval.only:  # before the data (minutes on a large set); eval.only writes rank 0's files alone
        check_shared_output_dir(out)
    with exclusive_output_dir(out, enabled=not cfg.eval.only):  # a second run into `out` stops here
        return _run(cfg, device, data_factory, out, start)


def _run(cfg, device: torch.device, data_factory, out: Path, start: float) -> dict:
    from clipbert.train.data import TaskData

    check_inputs_on_every_rank(cfg)  # multi-rank: every rank sees the start weights, so all stop alike below
    _check_start_weights(cfg)
    data = (data_factory or TaskData)(cfg, cfg.model_config(), device)
    model_cfg = resolved_model_config(cfg, data)
    refuse_previous_run(cfg, out)
    if cfg.eval.only:  # a training run writes its config.json once its resume is accepted (_train)
        write_resolved_config(cfg, model_cfg, out)
    model, engine_init, init_key = build_model(cfg, model_cfg)
    dtype = DTYPES[C.precision(cfg.deepspeed)]
    # eval.only keeps out of TensorBoard: its events would land in the evaluated run's curves
    runlog = RunLog(out, cfg.train.tensorboard and not cfg.eval.only)
    try:
        if cfg.eval.only:
            engine, _, _ = build_engine(cfg, model, 1, device)
            if engine_init:
                ckpt.load_module_only(engine, engine_init, init_key)
            step = ckpt.step_of(cfg.eval.checkpoint)  # metrics.jsonl: the evaluated checkpoint's step
            summary = {"metrics": _final_eval(cfg, engine, data, runlog, device, dtype, step=step)}
        else:
            summary = _train(cfg, model, model_cfg, data, engine_init, init_key, runlog, device, dtype, start)
    except BaseException:
        runlog.close(after_error=True)  # a failure of its last write must not hide the run's own error
        raise
    runlog.close()
    return summary


def _check_start_weights(cfg) -> None:
    """Find the trainer checkpoint a run starts from (train.init_checkpoint, eval.checkpoint with eval.only)
    before the data. Why: a missing one (stage 2 started before stage 1, a typo) was found only once the data,
    the model and the engine were built, and the run left its output dir behind with a tensorboard/ file."""
    init = cfg.eval.checkpoint if cfg.eval.only else cfg.train.init_checkpoint
    if init and not ckpt.is_pretrained_dir(init):  # an exported model/ is read in build_model
        ckpt.locate(init, "eval.checkpoint" if cfg.eval.only else "train.init_checkpoint")


def _final_eval(cfg, engine, data, runlog, device, dtype, step: int | None) -> dict | None:
    from clipbert.train.evaluate import evaluate

    split = cfg.eval.test_split
    if not data.has_split(split):
        if cfg.eval.only:  # the run's one job: a warning and exit 0 would pass for a finished evaluation
            raise FileNotFoundError(_no_eval_split(cfg, split))
        get_logger().warning("no %s split for %s: skipping the final evaluation", split, cfg.task.name)
        return None
    metrics = evaluate(engine, cfg, data.eval(split), split, device, dtype, data.visual_words(device))
    runlog.evaluation(step, split, metrics)
    if is_rank0():
        at = "" if step is None else f" (step {step})"
        print(format_table(metrics, f"{cfg.task.name} / {split}{at}"), flush=True)
    return metrics


def _no_eval_split(cfg, split: str) -> str:
    """Why an eval.only run has nothing to evaluate: no data.ann_dir at all (check_ann_dir's advice), or no
    annotation file for the split."""
    from clipbert.train.data import check_ann_dir

    path = Path(cfg.data.ann_dir) / f"{cfg.task.name}_{split}.jsonl"
    check_ann_dir(cfg.data.ann_dir, path.name)
    found = "holds no example" if path.is_file() else "not found"  # data.has_split: empty counts as none
    return f"eval.only: nothing to evaluate, annotation file {found}: {path} (eval.test_split={split})"


def _best_eval(cfg, engine, data, runlog, device, dtype, state) -> dict | None:
    """test_split with the weights selected on eval.split (best_model/), as split `test_best` at their step,
    when they are not the final weights; the engine is done training, so its weights are replaced."""
    from clipbert.train.evaluate import all_gather_objects, evaluate

    chosen, split = state.best, cfg.eval.test_split
    if not chosen or chosen["step"] == state.step or not data.has_split(split):
        return chosen or None
    directory = Path(cfg.train.output_dir) / best.BEST_DIR
    if all_gather_objects(best.read_record(directory) if is_rank0() else None)[0] != chosen:
        # removed on a resume (best.reconcile), and no evaluation after it selected these weights again
        get_logger().warning("%s does not hold the selected step %d: no test_best", directory, chosen["step"])
        return chosen
    best.load_into(engine, directory)
    words = data.visual_words(device)
    metrics = evaluate(engine, cfg, data.eval(split), split, device, dtype, words, name=f"{split}_best")
    runlog.evaluation(chosen["step"], "test_best", metrics)
    if is_rank0():
        title = (
            f"{cfg.task.name} / {split}, best {chosen['split']} {chosen['metric']} (step {chosen['step']})"
        )
        print(format_table(metrics, title), flush=True)
    return {**chosen, "test": metrics}


def _warn_if_from_scratch(cfg) -> None:
    """The paper's model trained from random weights fails (its Table 5: MSRVTT R1 0.3 with a random CNN).
    The shipped configs set no weights, so that each runs on its own: say so for a paper-sized model (the
    tiny preset's synthetic runs train from scratch on purpose)."""
    if cfg.model.preset != "base" or cfg.train.init_checkpoint:
        return
    missing = [k for k in ("init_cnn_from", "init_bert_from") if not getattr(cfg.model, k)]
    if missing:
        get_logger().warning(
            "training the base model without %s: its weights start random, and the paper's Table 5 shows "
            "that fail. Its setup: train.init_checkpoint=outputs/pretrain/model (ds_pretrain's, itself from "
            "model.init_cnn_from=R-50.pkl and model.init_bert_from=DIR); see docs/TRAINING.md",
            " or ".join(f"model.{k}" for k in missing) + " or train.init_checkpoint",
        )


def global_batch_warning(train, world: int) -> str | None:
    """What to say when a run's global batch is not the one `train.global_batch` names, else None. Why: the
    paper configs' learning rates and steps were set for 8 GPUs, and on 2 the same config silently trains
    with a quarter of the batch and 4x the optimizer steps."""
    got = train.batch_size * train.grad_accum * world
    if not train.global_batch or got == train.global_batch:
        return None
    say = (
        f"global batch {got} (train.batch_size={train.batch_size} x train.grad_accum={train.grad_accum} x "
        f"world {world}), but the config's learning rates are for train.global_batch={train.global_batch}: "
    )
    per_step = train.batch_size * world
    if train.global_batch % per_step == 0:
        return say + f"--set train.grad_accum={train.global_batch // per_step} restores it"
    return say + (
        f"no whole train.grad_accum restores it at batch_size {train.batch_size} on {world} rank(s); change "
        "train.batch_size, or scale train.lr and train.cnn_lr, or --set train.global_batch=0 to accept it"
    )


def _train(cfg, model, model_cfg, data, engine_init, init_key, runlog, device, dtype, start) -> dict:
    log = get_logger()
    _warn_if_from_scratch(cfg)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    warning = global_batch_warning(cfg.train, world)
    if warning and is_rank0():
        log.warning(warning)
    train_set, train_loader = data.train()
    if len(train_loader) == 0:  # nothing to step on: max_steps would loop over empty epochs forever
        raise C.ConfigError(
            f"{cfg.task.name}/train: {len(train_set)} training items make no full batch of "
            f"train.batch_size={cfg.train.batch_size} on each of {world} rank(s) (a last partial batch is "
            "dropped in training): lower train.batch_size or add training data"
        )
    total = total_training_steps(cfg.train, len(train_loader))
    engine, _, _ = build_engine(cfg, model, total, device)
    if engine_init:
        ckpt.load_module_only(engine, engine_init, init_key)
    trainer = Trainer(cfg, engine, data, model_cfg, device, dtype, runlog, total)
    resume = ckpt.find_resume(cfg.train.resume, cfg.train.output_dir)
    if resume:
        trainer.resume(*resume)
    elif cfg.train.resume == "auto":  # a run that stopped before its first checkpoint: its logs go
        runlog.rewind(0)
    if not resume:  # a best model of an earlier start in this dir is not this run's
        best.reconcile(Path(cfg.train.output_dir) / best.BEST_DIR, {})
    # only now: a refused resume (another task, a damaged checkpoint) must not replace the config.json of
    # the run it would have continued
    write_resolved_config(cfg, model_cfg, Path(cfg.train.output_dir))
    total = trainer.total_steps  # a resume re-plans it (Trainer._replan_total_steps)
    finished_before = bool(resume) and trainer.state.step >= total  # e.g. a second `make demo`
    log.info(
        "task %s: %d optimizer steps (%d micro batches/epoch/rank, accumulation %d), world %d, %s, ZeRO-%d",
        cfg.task.name,
        total,
        len(train_loader),
        cfg.train.grad_accum,
        dist.get_world_size() if dist.is_initialized() else 1,
        C.precision(cfg.deepspeed),
        engine.zero_optimization_stage(),
    )
    start_step = trainer.state.step
    with ckpt.StopSignal() as stop:
        try:
            reason = trainer.fit(stop)
        except TrainingDiverged:
            _plot(cfg)  # the curves of a diverged run are the ones its user needs most
            raise
    summary = {"reason": reason, "step": trainer.state.step, "bad_steps": trainer.state.bad_total}
    summary["empty_micro_batches"] = trainer.state.empty_total  # every sample dropped as bad input: skipped
    summary["finished_before"] = finished_before  # nothing trained now: the results are the recorded ones
    # A run that took no step now (finished before, or requeued with a stop that comes at once) keeps the
    # perf.json of the steps it did train, which a record of no steps (0 frames/s) would replace.
    recorded = _recorded_run(cfg, trainer.state.step) if trainer.state.step == start_step and resume else {}
    if reason == "done":
        _export(cfg, engine, model_cfg, data)
        if recorded.get("metrics"):
            log.info("the run had finished at step %d: its test evaluation stands", trainer.state.step)
            summary["metrics"] = recorded["metrics"]
        elif cfg.eval.final_eval:
            summary["metrics"] = _final_eval(cfg, engine, data, runlog, device, dtype, trainer.state.step)
            summary["best"] = _best_eval(cfg, engine, data, runlog, device, dtype, trainer.state)
    # a run resumed after its end trained nothing: its perf.json (the training's) stays
    summary["perf"] = recorded.get("perf") or _write_perf(
        cfg, trainer, engine, model_cfg, start, start_step if resume else None
    )
    _plot(cfg)
    return summary


def _plot(cfg) -> None:
    """training_curves.png (rank 0, train.plot). A failure (a full disk, a broken matplotlib) is a warning:
    the run's checkpoints, export and metrics are already written and must not end in a traceback."""
    if not (is_rank0() and cfg.train.plot):
        return
    from clipbert.train.plot import plot_curves

    try:
        plot_curves(cfg.train.output_dir)
    except Exception as err:  # noqa: BLE001 - anything the plot raises leaves the run's results standing
        get_logger().warning("training_curves.png not drawn: %s: %s", type(err).__name__, err)


def _export(cfg, engine, model_cfg, data) -> None:
    """<output_dir>/model: the weights, and predict.json so that the dir predicts without the run's files."""
    from clipbert.train.export import export_model

    def write(directory: Path) -> None:
        export_model(cfg, engine, model_cfg, data, directory)

    # through a staging dir: a failed write (a full disk) left a model/ of a config and cut-short weights
    best.replace_dir(write, Path(cfg.train.output_dir) / "model")


def _recorded_run(cfg, step: int) -> dict:
    """What a finished run recorded at its last `step`: the test split's metrics (metrics.jsonl) and
    perf.json, read by rank 0 and sent to every rank, which must agree on whether to evaluate again.

    Why: resuming a finished run (train.resume=auto, as a second `make demo` does) used to evaluate it again,
    logging the test row twice, and to overwrite perf.json with the empty record of a run of no steps."""
    out, found = Path(cfg.train.output_dir), {}
    if is_rank0():
        rows = [r for r in _read_jsonl(out / "metrics.jsonl") if r.get("step") == step]
        test = [r for r in rows if r.get("split") == cfg.eval.test_split]
        if test:
            found["metrics"] = {k: v for k, v in test[-1].items() if k not in ("step", "split")}
        try:
            found["perf"] = json.loads((out / "perf.json").read_text())
        except FileNotFoundError:
            pass
        except ValueError:  # cut short (older runs wrote it in place): this run's record replaces it
            get_logger().warning("%s is unreadable: it is written again", out / "perf.json")
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [found]
        dist.broadcast_object_list(box, src=0)
        found = box[0]
    return found


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
    return rows


def _write_perf(cfg, trainer, engine, model_cfg, start: float, resumed_at: int | None) -> dict:
    """perf.json: this session's figures; `resumed_at` (the step a resume started from, else None) chains
    the earlier sessions' records of the run under `earlier_sessions`, and `total_wall_s` sums them all."""
    perf = {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "task": cfg.task.name,
        "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "precision": C.precision(cfg.deepspeed),
        "zero_stage": engine.zero_optimization_stage(),
        "micro_batch": cfg.train.batch_size,
        "grad_accum": cfg.train.grad_accum,
        "num_clips": cfg.data.num_clips,
        "frames_per_clip": cfg.data.frames_per_clip,
        "image_size": cfg.data.image_size,
        "hidden_size": model_cfg.hidden_size,
        # what fed and shaped the run, so a recorded figure says how it was reached
        "data_backend": cfg.data.backend,
        "frame_store_reader": cfg.data.frame_store_reader if cfg.data.backend == "frame_store" else None,
        "channels_last": model_cfg.channels_last,
        "compile": cfg.train.compile,
        "start_step": resumed_at or 0,
        "steps": trainer.state.step,
        "wall_s": time.time() - start,
        **trainer.throughput.describe(),
        **(trainer.last_perf or trainer.throughput.snapshot()),
    }
    if trainer.profiler.result is not None:
        perf["step_profile"] = trainer.profiler.result
    if is_rank0():
        _chain_sessions(perf, Path(cfg.train.output_dir) / "perf.json", resumed_at)
    if is_rank0():  # through a temporary file: a kill mid-write must not leave a cut perf.json
        replace_text(Path(cfg.train.output_dir) / "perf.json", json.dumps(perf, indent=2) + "\n")
    return perf


def _chain_sessions(perf: dict, path: Path, resumed_at: int | None) -> None:
    """Add the earlier sessions of a resumed run (from its perf.json) and the run's total wall time.

    Why: a resumed run's perf.json covered the resumed session only, so a run stopped at 90% and resumed
    said it trained in the last 10%'s time (the demo's stage times too). Their frames/s and MFU stay per
    session, as each measured its own steps; steps a stop redoes (after the last checkpoint) count twice in
    the total, as the time was spent."""
    earlier = []
    if resumed_at is not None and path.is_file():
        try:
            last = json.loads(path.read_text())
        except ValueError:  # cut short by an older version's in-place write: unknown, left out
            last = None
        if isinstance(last, dict):
            earlier = [
                *last.pop("earlier_sessions", []),
                {k: v for k, v in last.items() if k != "total_wall_s"},
            ]
    if earlier:
        perf["earlier_sessions"] = earlier
    perf["total_wall_s"] = perf["wall_s"] + sum(float(r.get("wall_s") or 0.0) for r in earlier)


def resolved_config(cfg) -> dict:
    """The config as the run reads it, and under "model_config" the model it builds, before the data sizes
    its answer head and vocabulary (the run's config.json has those)."""
    return {**cfg.to_dict(), "model_config": cfg.model_config().to_dict()}


def _stop_with_the_other_ranks(args, error: str) -> int:
    """Exit code 2 for a rank whose config failed, after telling the other ranks of a multi-rank launch (they
    stop at their start, in agree_to_start, instead of waiting for this rank until the rendezvous times out).
    It joins their process group on the device its config names (read without the checks that failed),
    else on what train.device=auto picks: the backend must match theirs."""
    try:
        launch_env.apply(os.environ)
    except ValueError:
        return 2
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 2
    try:
        device = pick_device(_unchecked_device(args))
    except C.ConfigError:
        device = torch.device("cpu")
    try:
        init_distributed(device)
        agree_to_start(error)
    except Exception as err:  # noqa: BLE001 - this rank exits 2 with its own error logged, whatever happens
        get_logger().warning("could not tell the other ranks: %s", err)
    finally:
        close_distributed()
    return 2


def _unchecked_device(args) -> str:
    """train.device as the config file and --set give it, "auto" where they cannot be read."""
    try:
        device = C.read_raw(args.config, args.set).get("train", {}).get("device", "auto")
    except (C.ConfigError, OSError, ValueError, AttributeError):
        return "auto"
    return device if device in ("auto", "cpu", "cuda") else "auto"


def own_message(err: BaseException) -> str:
    """The error's own message. Raised in a DataLoader worker, an error comes back to the main process as its
    type with torch's message "Caught X in DataLoader worker process N.\nOriginal Traceback ...": a page of
    the worker's frames around the line that names the file. That line is kept, and where it was raised."""
    text = str(err)
    if "\nOriginal Traceback (most recent call last):" not in text:
        return text
    where = text.split("\n", 1)[0].removeprefix(f"Caught {type(err).__name__} ").rstrip(".")
    # the traceback's last entry: "clipbert.data.annotations.DataError: <message, maybe of several lines>"
    last = list(re.finditer(rf"^(?:[\w.]+\.)?{re.escape(type(err).__name__)}: ", text, re.MULTILINE))
    return f"{text[last[-1].end() :].strip()} ({where})" if last else text


def main(argv: list[str] | None = None) -> int:
    setup_environment()
    args = parse_args(argv)
    log = get_logger()
    try:
        # --print-config's stdout is the JSON alone (`> resolved.json`): DeepSpeed's import notes go to stderr
        with contextlib.redirect_stdout(sys.stderr) if args.print_config else contextlib.nullcontext():
            cfg = C.load(args.config, args.set)
        if args.print_config:  # before the device: a login node without the run's GPU may check a config
            print(json.dumps(resolved_config(cfg), indent=2))
            return 0
        # before the device: under srun or mpirun, LOCAL_RANK (which GPU) comes from the launcher's variables
        launch_env.apply(os.environ)
        device = pick_device(cfg.train.device)
    except (C.ConfigError, FileNotFoundError, ValueError) as err:
        log.error("config error: %s", err)
        return _stop_with_the_other_ranks(args, f"config error: {err}")
    init_distributed(device)
    try:
        not_ready = agree_to_start(None)
        if not_ready:
            if is_rank0():
                log.error("not starting: %s", not_ready)
            return 2
        summary = run(cfg, device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier()  # every rank done with its collectives before the group goes away
        if summary.get("reason") == "signal":  # `train.py && next step` must not go on from an unfinished run
            log.warning(
                "stopped by a signal at step %d; resume with --set train.resume=auto", summary["step"]
            )
            return STOPPED
    except (C.ConfigError, FileNotFoundError, DataError) as err:  # a bad key, path or file found later
        log.error("%s", own_message(err))  # no traceback: the message names the key or file
        return 2
    except TrainingDiverged as err:
        log.error("%s", err)
        return 3
    except OSError as err:
        if not is_write_failure(err):
            raise  # not a write that failed: unexpected, its traceback is wanted
        # a full disk or a failing file system: the message names the file (WriteError); the checkpoints
        # only ever move `latest` to a complete one, so a rerun goes on from the last one
        log.error(
            "%s. Free space (or fix the file system), then rerun: with --set train.resume=auto a training "
            "run continues",
            err,
        )
        return WRITE_FAILED
    finally:
        close_distributed()
    return 0
