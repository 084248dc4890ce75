"""The training loop: micro batches through the DeepSpeed engine, NaN guard, logging, eval, checkpoints.

Position bookkeeping (`TrainerState`) is what makes a resumed run identical to an uninterrupted one: the
epoch, the micro batches already consumed in it (the sampler skips them), and the optimizer step; the RNG
states travel in the checkpoint (checkpoint.py). Creating a DataLoader iterator draws from the global
torch RNG (worker seeds), so it runs under `fork_rng` and never shifts the dropout stream.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import time
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist

from clipbert.train import best
from clipbert.train import checkpoint as ckpt
from clipbert.train.config import ConfigError
from clipbert.train.engine import apply_hyperparameters, replan_schedule
from clipbert.train.evaluate import all_gather_objects, evaluate
from clipbert.train.export import export_model
from clipbert.train.logging import get_logger, is_rank0, writing
from clipbert.train.perf import Throughput
from clipbert.train.step_profile import StepProfiler
from clipbert.train.tasks import VisualWords, to_device, training_loss


class TrainingDiverged(RuntimeError):
    """Too many non-finite losses in a row."""


@dataclasses.dataclass
class TrainerState:
    epoch: int = 0
    step: int = 0  # optimizer steps done
    micro_in_epoch: int = 0  # micro batches consumed in `epoch` (including skipped ones)
    bad_total: int = 0  # micro batches skipped for a NaN/Inf loss, whole run
    bad_streak: int = 0  # ... in a row, up to now
    # micro batches skipped because the loader dropped every row as bad input (no loss; not in bad_streak)
    empty_total: int = 0
    overflow_total: int = 0  # optimizer steps DeepSpeed skipped (fp16 loss-scale overflow), whole run
    # the epoch's bad files so far, over all ranks (file -> times met): a resume adds them to the epoch's
    # summary, which would otherwise report only what the resumed part met
    bad_inputs_epoch: dict = dataclasses.field(default_factory=dict)
    # ... and the DALI loader's PyAV fallbacks (file -> why not DALI): those met this epoch so far, and those
    # earlier summaries named. A resumed loader reports again the files it meets: these keep its summaries
    # the uninterrupted run's (BadInputTracker)
    pyav_fallbacks_epoch: dict = dataclasses.field(default_factory=dict)
    pyav_fallbacks_reported: list = dataclasses.field(default_factory=list)
    # what the position above is counted in, and the optimizer's settings (Trainer.plan)
    plan: dict = dataclasses.field(default_factory=dict)
    # the model's ClipBertConfig.to_dict(): a resume or a load checks its weight keys against the config's
    model: dict = dataclasses.field(default_factory=dict)
    # the best eval.split evaluation so far ({"metric", "value", "step", "split"}), exported as best_model/
    best: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _sampler(loader):
    sampler = getattr(loader, "sampler", None)
    if sampler is None:  # the DALI loader wraps a DataLoader
        sampler = getattr(getattr(loader, "loader", None), "sampler", None)
    if sampler is None or not hasattr(sampler, "set_epoch"):
        raise TypeError(
            f"the train loader {type(loader).__name__} has no sampler with set_epoch(epoch, consumed)"
        )
    return sampler


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def average_batchnorm_statistics(buffers: list[torch.Tensor]) -> None:
    """Make every rank's BatchNorm running statistics (`_batchnorm_statistics`) their mean over the ranks (a
    no-op on one process).

    Why: DeepSpeed, unlike DDP, never syncs buffers after its first broadcast, so a trainable BatchNorm
    (model.frozen_bn=false, the tiny preset) tracked each rank's shard alone. With 2 ranks an evaluation
    encoded each rank's videos with another normalization, and its metrics were those of no model: not
    the exported one's (rank 0's), which evaluated on its own gave others; a resume gave every rank rank 0's.
    Called at every optimizer step (where a run may stop, save, evaluate or export), so all ranks hold one
    state there, the one saved, and a resumed run repeats the uninterrupted one."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    stats = [buf for buf in buffers if buf.is_floating_point()]  # not the counter
    if not stats:  # frozen BatchNorm (the paper's): nothing moves
        return
    flat = torch.cat([buf.detach().float().flatten() for buf in stats])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for buf in stats:
        buf.copy_(flat[offset : offset + buf.numel()].view_as(buf))
        offset += buf.numel()


def _batchnorm_statistics(module: torch.nn.Module) -> list[torch.Tensor]:
    """The buffers a trainable BatchNorm's forward moves in training mode (none under frozen_bn)."""
    return [
        buf
        for m in module.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        for buf in (m.running_mean, m.running_var, m.num_batches_tracked)
        if buf is not None
    ]


def _bad_inputs_over_ranks(tracker) -> Counter[str]:
    """The epoch's bad files so far (file -> times met), summed over the ranks (a collective)."""
    merged: Counter[str] = Counter()
    for part in all_gather_objects(dict(tracker.epoch)):
        merged.update(part)
    return merged


def _fallbacks_over_ranks(tracker) -> dict[str, str]:
    """The epoch's PyAV fallbacks so far (file -> why not DALI), of every rank (a collective)."""
    merged: dict[str, str] = {}
    for part in all_gather_objects(dict(tracker.pyav)):
        for name, reason in part.items():
            merged.setdefault(name, reason)
    return merged


def _first_row(batch: dict) -> dict:
    """A one-row copy of a micro batch (every tensor and list with one entry per row, the rest as they are):
    an empty micro batch's stand-in (Trainer._forward_batch). A copy: a view would keep the whole batch."""
    b = batch["frames"].shape[0]  # [B, N, T, 3, L, L]
    out = {}
    for key, value in batch.items():
        if key == "bad_videos":  # the loader's report, not a row's
            out[key] = []
        elif isinstance(value, torch.Tensor) and value.shape[:1] == (b,):
            out[key] = value[:1].clone()
        elif isinstance(value, list) and len(value) == b:
            out[key] = value[:1]
        else:
            out[key] = value
    return out


def _sum_over_ranks(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


class Trainer:
    def __init__(self, cfg, engine, data, model_cfg, device, dtype, runlog, total_steps: int):
        self.cfg, self.engine, self.data, self.device, self.dtype = cfg, engine, data, device, dtype
        self.runlog, self.total_steps = runlog, total_steps
        self.train_set, self.train_loader = data.train()
        self.words = None
        if cfg.train.visual_word_loss:
            self.words = VisualWords.from_vocab(self.train_set.word_vocab, cfg.train.visual_word_loss, device)
        self.model_cfg = model_cfg
        self.state = TrainerState(plan=self.plan(), model=model_cfg.to_dict())
        self.throughput = Throughput(model_cfg, device, _world(), cfg.train.peak_tflops)
        self.out = Path(cfg.train.output_dir)
        self.log = get_logger()
        rank = dist.get_rank() if dist.is_initialized() else 0
        self.profiler = StepProfiler(
            cfg.train.profile_start, cfg.train.profile_steps, self.out, device, rank, self.log
        )
        self.last_saved_step = -1
        # good micro batches whose gradients wait for the next optimizer step; 0 at every checkpoint (save)
        self.accumulated = 0
        self.last_perf: dict = {}
        # A stop signal as every rank saw it in the last per-micro-batch all-reduce. Decisions with
        # collectives after them (the end-of-epoch evaluation, the final one) read this, never the local
        # flag: a signal that lands after the all-reduce would otherwise send one rank into an evaluation
        # and another into the checkpoint, and the run would hang.
        self.stop_agreed = False
        self._eval_data = {}
        self._warned_no_metric = False
        self.epoch_batches = 0  # micro batches of the epoch being run, the resumed part included (_epoch)
        # found once, not on every micro step: the same tensors for the whole run (a resume copies into them)
        self.bn_stats = _batchnorm_statistics(engine.module)
        # The last non-empty micro batch's first row (_first_row), forwarded in place of an empty one where
        # a forward must run (_forward_batch, _backward_at_boundary); and whether every rank holds one.
        self.stand_in: dict | None = None
        self.stand_in_everywhere = False
        try:
            from clipbert.data.bad_input import BadInputTracker

            self.tracker = BadInputTracker(self.log)
        except ImportError:  # pragma: no cover - the data package always ships it
            self.tracker = None

    # ------------------------------------------------------------------ helpers
    def eval_data(self, split: str):
        if split not in self._eval_data:
            self._eval_data[split] = self.data.eval(split)
        return self._eval_data[split]

    def run_eval(self, split: str) -> dict:
        with torch.random.fork_rng(devices=[]):  # eval loader iterators must not move the training RNG
            metrics = evaluate(
                self.engine, self.cfg, self.eval_data(split), split, self.device, self.dtype, self.words
            )
        self.runlog.evaluation(self.state.step, split, metrics)
        if split == self.cfg.eval.split:
            self._select(metrics, split)
        self.throughput.reset()
        return metrics

    def _select(self, metrics: dict, split: str) -> None:
        """Export best_model/ when this evaluation beats the best so far (clipbert/train/best.py)."""
        metric = best.selection_metric(self.cfg)
        if metric is None:
            return
        # rank 0's view decides for all: the export below is collective
        value = all_gather_objects(metrics.get(metric))[0]
        if not best.finite(value):
            if metric not in metrics and not self._warned_no_metric:
                self._warned_no_metric = True
                self.log.warning("eval %s reports no %s: no best model is selected", split, metric)
            return
        if not best.beats(value, self.state.best, metric):
            return
        record = {"metric": metric, "value": value, "step": self.state.step, "split": split}
        export = lambda directory: export_model(self.cfg, self.engine, self.model_cfg, self.data, directory)  # noqa: E731
        best.export_best(export, self.out / best.BEST_DIR, record)
        self.state.best = record
        self.log.info(
            "best %s %s=%.4g at step %d: exported to %s",
            split,
            metric,
            value,
            self.state.step,
            self.out / best.BEST_DIR,
        )

    def save(self) -> None:
        if self.state.bad_streak:  # never replace the last good checkpoint with a state after a bad step
            self.log.warning("not checkpointing at step %d: the last loss was not finite", self.state.step)
            return
        if self.state.step == self.last_saved_step:
            return
        if self.accumulated:  # DeepSpeed does not save pending gradients: a resume would lose them
            self.log.warning(
                "not checkpointing at step %d: in the middle of an accumulation", self.state.step
            )
            return
        if self.tracker is not None:  # every rank reaches here (the returns above agree across ranks)
            self.state.bad_inputs_epoch = dict(_bad_inputs_over_ranks(self.tracker))
            self.state.pyav_fallbacks_epoch = _fallbacks_over_ranks(self.tracker)
            self.state.pyav_fallbacks_reported = sorted(self.tracker.pyav_reported)
        ckpt.save(self.engine, self.out, self.state.to_dict(), self.cfg.train.keep_checkpoints)
        self.last_saved_step = self.state.step
        self.throughput.reset()

    def plan(self) -> dict:
        """What a checkpoint's position (epoch, micro batches into it, step) means, and the optimizer's
        settings: the epoch's micro batches are this rank's shard in batches, and the steps a fraction of the
        schedule."""
        optimizer = ("lr", "cnn_lr", "weight_decay", "cnn_weight_decay", "betas", "eps", "warmup_ratio")
        counting = ("batch_size", "grad_accum")
        return {
            **{f"train.{k}": getattr(self.cfg.train, k) for k in optimizer + counting},
            "world_size": _world(),
            "zero_stage": self.engine.zero_optimization_stage(),
            "data.seed": self.cfg.data.seed,
            "micro_batches_per_epoch": len(self.train_loader),
            "total_steps": self.total_steps,
            # What shapes the training batches and the loss, so that a resume that changes one says so (it
            # went on silently, e.g. with data.num_clips 2 -> 1, a run that is not the interrupted one).
            # task.name is refused (resume), train.seed is not applied (the RNG states are restored).
            "task.name": self.cfg.task.name,
            "task.aggregation": self.cfg.task.aggregation,
            **{f"train.{k}": getattr(self.cfg.train, k) for k in self.RUN_TRAIN_KEYS},
            **{f"data.{k}": getattr(self.cfg.data, k) for k in self.RUN_DATA_KEYS},
            # this task's budget: another task's entry changes nothing here
            "data.max_text_len": self.cfg.data.max_text_len[self.cfg.task.name],
            **{f"model.{k}": getattr(self.model_cfg, k) for k in self.RUN_MODEL_KEYS},
            # what the QA head's classes mean: _check_heads refuses a resume under other answers
            **({"data.answers": answers} if (answers := self._answer_vocab_digest()) else {}),
            # the training texts themselves: a regenerated or edited annotation file of as many examples
            # went on as the same run's data
            **({"data.train_annotations": digest} if (digest := self._train_annotations_digest()) else {}),
        }

    RUN_TRAIN_KEYS = ("seed", "grad_clip", "visual_word_loss", "visual_word_steps")
    RUN_DATA_KEYS = ("num_clips", "frames_per_clip", "image_size", "clip_seconds", "train_sampling")
    RUN_DATA_KEYS += ("itm_neg_size", "mlm_prob", "itm_neg_prob", "mlm_on_swapped")
    RUN_DATA_KEYS += ("image_orientation",)
    # the decoder: another one gives other frames (a frame store's nearest stored ones, another codec's
    # rounding), and a resume through it went on without a word
    RUN_DATA_KEYS += ("backend",)
    # the model's keys that change its training but not its weights' shapes (WEIGHT_KEYS are refused)
    RUN_MODEL_KEYS = ("frozen_bn", "freeze_at", "pixel_random_sampling_size", "hidden_dropout")
    RUN_MODEL_KEYS += ("attention_dropout", "mlm_loss_norm")

    def resume(self, root: Path, tag: str) -> None:
        # Before DeepSpeed loads. Another task's checkpoint (another retrieval set, say) loaded and trained
        # on silently, mixing two tasks in one run's position, logs and schedule; one with another head
        # failed with a state-dict dump. Fine-tuning from another task is train.init_checkpoint.
        saved_task = ckpt.saved_plan(root, tag).get("task.name", self.cfg.task.name)
        if saved_task != self.cfg.task.name:
            raise ConfigError(
                f"train.resume: checkpoint {root / tag} was trained for task.name={saved_task}, the config "
                f"says task.name={self.cfg.task.name}. Resume it with task.name={saved_task}, or start the "
                f"new task from it in a new train.output_dir with train.init_checkpoint={root / tag}"
            )
        # before DeepSpeed loads: a shape mismatch there would name tensors, not the config keys behind them
        ckpt.check_model_config(
            ckpt.saved_model_config(root, tag), self.model_cfg, "train.resume", root / tag
        )
        self._check_heads(root, tag)
        ckpt.check_engine_layout(self.engine, root, tag, _world())  # another ZeRO stage or partitioning
        self.state = TrainerState(**ckpt.load(self.engine, root, tag))
        best.reconcile(self.out / best.BEST_DIR, self.state.best)
        self._restore_bad_inputs()
        self.last_saved_step = self.state.step
        self._translate_position(tag)
        now, saved = self.plan(), dict(self.state.plan)
        if isinstance(saved.get("data.max_text_len"), dict):  # saved before the plan kept this task's alone
            saved["data.max_text_len"] = saved["data.max_text_len"].get(self.cfg.task.name)
        changed = {k: (saved[k], v) for k, v in now.items() if saved.get(k, v) != v}
        if "train.seed" in changed:  # the restored RNG states make the seed moot: say so, not "changed"
            old, new = changed.pop("train.seed")
            self.log.warning(
                "resume from %s: train.seed %s -> %s is not applied: a resume restores the checkpoint's RNG "
                "states, so the run goes on with the interrupted run's random streams",
                tag,
                old,
                new,
            )
        changed = [f"{k} {old} -> {new}" for k, (old, new) in changed.items()]
        if changed:  # allowed (more epochs, another cluster), but not the run that was interrupted
            self.log.warning(
                "resume from %s: the run's plan changed since the checkpoint (%s), so the resumed run does "
                "not repeat the interrupted one: it goes on from the same place in the epoch's data, and "
                "the optimizer and LR schedule follow the new values from this step on",
                tag,
                ", ".join(changed),
            )
        self.state.plan, self.state.model = now, self.model_cfg.to_dict()
        self._replan_total_steps()
        apply_hyperparameters(self.engine.optimizer, self.engine.lr_scheduler, self.cfg.train)
        ckpt.set_aside_newer(self.out, self.state.step)
        self.runlog.rewind(self.state.step)

    def _train_annotations_digest(self) -> str | None:
        """sha256 (16 hex digits) of the training annotation file, read once; None without one."""
        if not hasattr(self, "_train_digest"):
            path, self._train_digest = getattr(self.train_set, "ann_path", None), None
            if path:
                try:
                    with open(path, "rb") as f:  # read in chunks: no whole copy of a large file per rank
                        self._train_digest = hashlib.file_digest(f, "sha256").hexdigest()[:16]
                except OSError:
                    pass
        return self._train_digest

    def _answer_vocab(self) -> Path:
        return Path(self.cfg.data.ann_dir) / f"{self.cfg.task.name}_ans2label.json"

    def _answer_vocab_digest(self) -> str | None:
        """A digest of the QA head's answer -> class mapping, the one the training set read from the task's
        ans2label file; None without one (in-memory test data)."""
        ans2label = getattr(self.train_set, "ans2label", None)
        if self.model_cfg.head != "qa" or not isinstance(ans2label, dict):
            return None
        return hashlib.sha256(json.dumps(ans2label, sort_keys=True).encode()).hexdigest()[:16]

    def _check_heads(self, root: Path, tag: str) -> None:
        """Refuse, before DeepSpeed loads, a checkpoint whose heads this model lacks or does not expect: the
        visual-word head (built while train.visual_word_loss > 0), or a QA head of other answers (another
        count, or the same count mapped otherwise: the plan's digest of the ans2label file).

        Why: their weights and optimizer state are in the checkpoint or not, and DeepSpeed's load failed
        with a RuntimeError listing state-dict keys or the classifier's shapes. Not a WEIGHT_KEYS check:
        fine-tuning (train.init_checkpoint) may start from another head, as the paper fine-tunes each task."""
        saved = ckpt.saved_model_config(root, tag) or {}
        where = f"train.resume: checkpoint {root / tag}"
        if "visual_words" in saved and bool(saved["visual_words"]) != self.model_cfg.visual_words:
            old = ckpt.saved_plan(root, tag).get(
                "train.visual_word_loss", "> 0" if saved["visual_words"] else 0
            )
            raise ConfigError(
                f"{where} was trained with train.visual_word_loss={old}, this run has "
                f"train.visual_word_loss={self.cfg.train.visual_word_loss}: the visual-word head's weights "
                "and optimizer state are in a checkpoint only while its loss is on, so a resume cannot turn "
                f"it on or off (another weight > 0 is allowed). Resume with train.visual_word_loss={old}, or "
                "start over in a new train.output_dir"
            )
        if not (saved.get("head") == "qa" and self.model_cfg.head == "qa"):
            return
        old_answers, answers = saved.get("num_answers"), self.model_cfg.num_answers
        old_digest, digest = ckpt.saved_plan(root, tag).get("data.answers"), self._answer_vocab_digest()
        if old_answers != answers:
            what = f"a QA head of {old_answers} answers, but {self._answer_vocab()} has {answers}"
        elif old_digest and digest and old_digest != digest:  # the same count: the classes mean others
            what = f"a QA head trained on other answers (or in another order) than {self._answer_vocab()}'s"
        else:
            return
        raise ConfigError(
            f"{where} has {what}: resume it with the answer vocabulary it was trained with (data.ann_dir), "
            "or fine-tune on this one from its weights with train.init_checkpoint in a new "
            "train.output_dir (a new head starts fresh)"
        )

    def _translate_position(self, tag: str) -> None:
        """Restate the checkpoint's position in the epoch (micro batches of each rank's shard) for this run's
        world size and micro batch.

        Why: the epoch's order is one permutation whatever the world (data/loader.py ShardedSampler), dealt
        out by rank in turn, so k micro batches of b on each of W ranks consumed exactly its first k*b*W
        examples. The position used to be kept as k: resumed on another world or batch size, the run skipped
        examples it had not trained on (2 -> 1 processes: half of those consumed seen again; 1 -> 2: examples
        never seen). Now it goes on at the same example of the order, rounded down to a whole micro batch of
        the new world: the few examples of the part that does not divide are seen again, with a warning."""
        old = self.state.plan
        world, batch = _world(), self.cfg.train.batch_size
        old_world, old_batch = int(old.get("world_size", world)), int(old.get("train.batch_size", batch))
        if (old_world, old_batch) == (world, batch) or not self.state.micro_in_epoch:
            return
        consumed = self.state.micro_in_epoch * old_batch * old_world  # examples of the epoch's order
        micro = min(consumed // (batch * world), len(self.train_loader))
        again = consumed - micro * batch * world
        self.log.warning(
            "resume from %s: %d micro batch(es) of %d on each of %d rank(s) consumed the first %d examples "
            "of epoch %d; with micro batches of %d on %d rank(s) it goes on after micro batch %d%s",
            tag,
            self.state.micro_in_epoch,
            old_batch,
            old_world,
            consumed,
            self.state.epoch,
            batch,
            world,
            micro,
            f" (the last {again} of those examples are seen again)" if again > 0 else "",
        )
        self.state.micro_in_epoch = micro

    def _replan_total_steps(self) -> None:
        """total_steps of a resumed run by epochs: the steps done plus those the rest of the data gives under
        this run's plan (the same number when the plan did not change).

        Why: total_steps was epochs x steps per epoch of the new plan while the step count was the old
        plan's, so a resume under another world size, micro batch or accumulation ended the run before its
        last epoch's data (with more steps per epoch before) or after the data ran out with the LR schedule
        short of its end (fewer). The LR schedule is re-planned to end with the run."""
        if self.cfg.train.max_steps:  # a step budget: the steps are what was asked for
            return
        n, accum = len(self.train_loader), self.cfg.train.grad_accum
        done = min(self.state.micro_in_epoch, n)  # more when the data shrank: the sampler yields none
        # boundaries left in this epoch: every accum-th position and the epoch's last (_accumulation_boundary)
        left = n // accum - done // accum + (1 if n % accum and n > done else 0)
        later = max(0, self.cfg.train.epochs - self.state.epoch - 1) * steps_per_epoch(n, accum)
        total = (
            self.state.step + left + later if self.state.epoch < self.cfg.train.epochs else self.state.step
        )
        if total == self.total_steps:
            return
        self.log.warning(
            "resume: %d optimizer steps in total (%d done, %d left in the data), not the %d of a fresh run "
            "with this plan; the LR schedule ends at step %d",
            total,
            self.state.step,
            total - self.state.step,
            self.total_steps,
            total,
        )
        self.total_steps = total
        if self.engine.lr_scheduler is not None:
            replan_schedule(self.engine.lr_scheduler, total, self.cfg.train.warmup_ratio)

    def _lrs(self) -> dict:
        groups = self.engine.optimizer.param_groups
        out = {}
        for group in groups:  # the first group of each kind (decay / no-decay share the LR)
            name = "cnn_lr" if group.get("group", "").startswith("cnn") else "lr"
            out.setdefault(name, group["lr"])
        return out

    def _write_step(self, record: dict) -> None:
        if is_rank0():
            path = self.out / "steps.jsonl"
            with writing(path), open(path, "a") as f:
                f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ the loop
    def fit(self, stop_signal) -> str:
        """Train until total_steps (or a stop); returns why it stopped: done | stop_after_steps | signal."""
        t = self.cfg.train
        bar = self._progress_bar()
        window = {"loss": 0.0, "good": 0, "bad": 0}
        self.throughput.reset()
        self.profiler.boundary(self.state.step)
        reason = "done"
        stop_at = t.stop_after_steps
        if stop_at and self.state.step >= stop_at and self.state.step < self.total_steps:
            # the same command again (a requeue) must not take one more step each time
            self.log.info("train.stop_after_steps=%d already reached at step %d", stop_at, self.state.step)
            if bar is not None:
                bar.close()
            return "stop_after_steps"
        try:
            while self.state.step < self.total_steps and self.state.epoch < t.epochs + self._extra_epochs():
                reason = self._epoch(stop_signal, bar, window)
                if reason != "continue":
                    break
        finally:
            self.profiler.close(self.state.step)
            if bar is not None:
                bar.close()
        reason = "done" if reason == "continue" else reason
        if (
            reason == "done"
            and self.stop_agreed
            and (self.state.step < self.total_steps or self.state.bad_streak)
        ):
            # the stop met a bad last micro batch and no good step followed: not a finished run (no export
            # or final evaluation after the signal)
            reason = "signal"
        self.save()  # a no-op when this step is already saved or the last loss was bad
        return reason

    def _extra_epochs(self) -> int:
        # max_steps may ask for more steps than `epochs` gives: run as many epochs as that takes
        return 10**9 if self.cfg.train.max_steps else 0

    def _progress_bar(self):
        if not (is_rank0() and self.cfg.train.progress_bar):
            return None
        from clipbert.progress import progress_bar

        return progress_bar(
            total=self.total_steps, initial=self.state.step, desc=self.cfg.task.name, dynamic_ncols=True
        )

    def _epoch(self, stop_signal, bar, window) -> str:
        t = self.cfg.train
        sampler = _sampler(self.train_loader)
        sampler.set_epoch(self.state.epoch, self.state.micro_in_epoch)
        epoch_batches = self.state.micro_in_epoch + len(self.train_loader)
        self.epoch_batches = epoch_batches
        # the loaders make their DataLoader iterator (and draw its workers' seed) in iter(), not lazily at the
        # first batch, so this covers the draw (data/loader.py NormalizingLoader.__iter__)
        with torch.random.fork_rng(devices=[]):
            batches = iter(self.train_loader)
        while True:
            asked = time.perf_counter()
            with self.profiler.phase("data_wait"):
                batch = next(batches, None)
            if batch is None:
                break
            self.throughput.waited(time.perf_counter() - asked)
            if self.tracker is not None:
                self.tracker.update(batch)
            last = self.state.micro_in_epoch + 1 == epoch_batches
            stop = self._micro_step(batch, stop_signal, bar, window, last)
            # finishing on the epoch's last batch still runs the end-of-epoch eval and checkpoint
            if stop and not (stop == "done" and self.state.micro_in_epoch == epoch_batches):
                return stop
        self.state.epoch += 1
        self.state.micro_in_epoch = 0
        if self.tracker is not None:
            self._bad_input_summary()
        if t.eval_every == 0 and not self.stop_agreed:  # a stop waits for a step, not an evaluation
            self.run_eval(self.cfg.eval.split)
        if t.save_every == 0 or self.state.step % t.save_every == 0:  # _after_step left this one to here
            self.save()
        return "done" if self.state.step >= self.total_steps else "continue"

    def _bad_input_summary(self, epoch: int | None = None) -> None:
        """The epoch's bad files of every rank, logged once by rank 0 and appended to bad_inputs.jsonl; the
        epoch that just ended unless `epoch` names the one a run ends inside.

        Why gather: each rank meets only its shard's files and only rank 0 logs warnings, so on 8 GPUs 7/8
        of the bad files went unreported and the summary could say "no bad input". The DALI loader's PyAV
        fallbacks are gathered the same way and given apart (BadInputTracker.summary)."""
        self.tracker.epoch = _bad_inputs_over_ranks(self.tracker)
        self.tracker.pyav = _fallbacks_over_ranks(self.tracker)
        # logs, then starts the next epoch's count
        result = self.tracker.summary(self.state.epoch - 1 if epoch is None else epoch)
        if is_rank0() and (result["bad_files"] or result.get("pyav_fallbacks")):
            path = self.out / "bad_inputs.jsonl"
            with writing(path), open(path, "a") as f:
                f.write(json.dumps({"step": self.state.step, **result}) + "\n")

    def _restore_bad_inputs(self) -> None:
        """Put the checkpoint's count of the epoch's bad files back, on rank 0 only (the epoch summary sums
        the ranks' counts). Why: files met before a stop, by any rank, were never reported when the run
        resumed mid-epoch; the files are not warned about again.

        The PyAV fallbacks too: the resumed DALI loader reports again every file it sends to PyAV, which
        would otherwise be named again, as new, in the next summary."""
        if self.tracker is None:
            return
        self.tracker.pyav_reported.update(self.state.pyav_fallbacks_reported)  # the same on every rank
        if not is_rank0():
            return
        self.tracker.pyav.update(self.state.pyav_fallbacks_epoch)
        self.tracker.epoch.update(self.state.bad_inputs_epoch)
        self.tracker.total.update(self.state.bad_inputs_epoch)

    def _accumulation_boundary(self, last_in_epoch: bool) -> bool:
        """Whether this micro batch ends its accumulation window: every train.grad_accum micro batches of the
        epoch, counted by position (skipped bad ones included), and always on the epoch's last one. Why the
        trainer decides and tells DeepSpeed: the engine counts micro steps over the whole run, so its windows
        would straddle epoch ends. Each epoch would then run fewer than the planned ceil(batches / grad_accum)
        steps, and an end-of-epoch checkpoint would drop the pending gradients, so a resumed run would differ.
        Why by position: whatever is skipped, every epoch runs its planned steps, so the run reaches
        total_steps and the LR schedule its end."""
        return last_in_epoch or (self.state.micro_in_epoch + 1) % self.cfg.train.grad_accum == 0

    def _window_scale(self) -> float:
        """The loss factor of this micro batch: grad_accum / r in an epoch's last window when it holds only r
        micro batches (the epoch's count not a multiple of grad_accum), else 1. Why: DeepSpeed divides every
        loss by grad_accum, so that window's update was the mean gradient times r / grad_accum, a smaller
        step at each epoch's end than the plan's; now every window's update is its micro batches' mean."""
        # the epoch's whole count: after a mid-epoch resume len(train_loader) leaves out the consumed part
        n, accum = self.epoch_batches, self.cfg.train.grad_accum
        partial = n % accum
        if partial and n - partial <= self.state.micro_in_epoch < n:
            return accum / partial
        return 1.0

    def _micro_step(self, batch: dict, stop_signal, bar, window, last_in_epoch: bool) -> str | None:
        t = self.cfg.train
        engine = self.engine
        prof = self.profiler
        with prof.phase("to_device"):
            batch = to_device(batch, self.device, self.dtype)
        boundary = self._accumulation_boundary(last_in_epoch)
        engine.set_gradient_accumulation_boundary(boundary)  # before the forward, as DeepSpeed asks
        scale = self._window_scale()  # before micro_in_epoch moves on
        words_only = self.state.step < t.visual_word_steps  # the CNN-only warm-up of the visual-word loss
        rows = batch["frames"].shape[0]  # 0: the DALI loader dropped every row as bad input (drop_rows)
        forward = self._forward_batch(batch, rows)
        # Why: the forward moves BatchNorm's running statistics even when its loss is then skipped; NaN frames
        # made them NaN, so the exported model and every later evaluation gave NaN scores (a recall of 0)
        bn_before = [buf.clone() for buf in self.bn_stats]  # none under frozen_bn
        loss, extra = None, {}
        if forward is not None:
            with prof.phase("forward"), self._rng_untouched(not rows):
                loss, extra = training_loss(
                    engine, forward, self.cfg.task.kind, self.cfg.task.aggregation, self.words, words_only
                )
        with prof.phase("loss_check"):
            own = loss is not None and rows > 0  # a stand-in's loss is discarded
            value = loss.detach().float() if own else torch.zeros(())
            finite = bool(torch.isfinite(value).item())
            # One collective per micro batch: every rank skips together and stops together.
            bad, empty, stop, loss_sum, good = _sum_over_ranks(
                [
                    0.0 if finite else 1.0,
                    0.0 if rows else 1.0,
                    float(stop_signal.requested),
                    value.item() if finite else 0.0,
                    float(finite),
                ],
                self.device,
            )
        self.state.micro_in_epoch += 1
        self.stop_agreed = self.stop_agreed or bool(stop)
        if bad or empty:
            # A stop after a bad micro batch waits for the next good boundary: here nothing could be saved
            # (the last loss is bad, and the window's good micro batches may hold pending gradients), so the
            # run would end unsaved.
            self._restore_batchnorm(bn_before)
            if bad:  # a non-finite loss on some rank is the divergence guard's, whatever else was empty
                self._skip_bad(window)
            else:
                self._skip_empty(window, int(empty))
            del loss
            if not boundary:
                return None
            # a good micro batch earlier in the window had rows on every rank: each holds a stand-in
            zero_batch = batch if rows else self.stand_in
            if self.accumulated and self._backward_at_boundary(zero_batch, words_only, bn_before):
                lrs = self._lrs()
                with prof.phase("optimizer"):
                    engine.step()
                self.accumulated = 0
                self._end_step(window, {}, lrs, bar)
            else:
                self._step_without_update(window, bar)
            if bad or self.accumulated or self.state.bad_streak:
                # a stop or stop_after_steps waits for the next good step: a bad last loss is never saved
                return "done" if self.state.step >= self.total_steps else None
            return self._stop_after_step(bool(stop))  # an empty one leaves nothing a checkpoint would lose
        with prof.phase("backward"):
            engine.backward(loss * scale if scale != 1.0 else loss)
        # the LRs this update applies: engine.step() steps the scheduler on a boundary, so read them first
        lrs = self._lrs() if boundary else None
        with prof.phase("optimizer"):
            engine.step()
        self.state.bad_streak = 0
        self.throughput.add(batch, cnn_only=words_only)
        prof.add_batch(batch)
        window["loss"] += loss_sum / good
        window["good"] += 1
        if not boundary:
            self.accumulated += 1
            return None
        self.accumulated = 0
        self._end_step(window, extra, lrs, bar)
        return self._stop_after_step(bool(stop))

    def _stop_after_step(self, stop: bool) -> str | None:
        """Why the run stops after this optimizer step (done | stop_after_steps | signal), or None."""
        t = self.cfg.train
        if self.state.step >= self.total_steps:
            return "done"
        if t.stop_after_steps and self.state.step >= t.stop_after_steps:
            self.log.info("train.stop_after_steps=%d reached: checkpointing and stopping", t.stop_after_steps)
            return "stop_after_steps"
        if stop:
            return "signal"
        return None

    def _forward_batch(self, batch: dict, rows: int) -> dict | None:
        """What this micro step forwards: its batch; for an empty one (rows 0: every sample dropped as bad
        input, skipped on every rank) nothing, but under ZeRO-3 the stand-in, the last non-empty micro
        batch's first row, whose loss is discarded. Why: ZeRO-3's forward gathers the parameters with the
        other ranks, so every rank must run it (as evaluation's `balanced` does); the model refuses B = 0.

        Under ZeRO-3, until every rank holds a stand-in, the ranks first agree (one all-reduce) whether one
        lacks it (its micro batches so far all empty): then none forwards and the micro batch is skipped on
        every rank, where that rank alone would have left the others waiting in their forwards."""
        zero3 = self.engine.zero_optimization_stage() == 3
        # Kept only where it can serve: ZeRO-3's forward, or a window's end after good micro batches (only
        # with train.grad_accum > 1). Why not always: a copy on every micro step of the hot path for nothing.
        if rows and (zero3 or self.cfg.train.grad_accum > 1):
            self.stand_in = _first_row(batch)
        if zero3 and not self.stand_in_everywhere:
            if _sum_over_ranks([float(self.stand_in is None)], self.device)[0]:
                return None  # a rank without a stand-in has an empty micro batch: it is skipped everywhere
            self.stand_in_everywhere = True
        if rows:
            return batch
        return self.stand_in if zero3 else None

    def _rng_untouched(self, discarded: bool):
        """For a discarded forward (the stand-in's): the RNG states as they were after it. Why: its dropout
        draws would shift the stream of every later step, and ZeRO-3 runs would differ from the others'."""
        if not discarded:
            return contextlib.nullcontext()
        cuda = [self.device] if self.device.type == "cuda" else []
        return torch.random.fork_rng(devices=cuda)

    def _end_step(self, window, extra: dict, lrs: dict, bar) -> None:
        """After engine.step() at a boundary: count the step, and log it."""
        self.state.step += 1
        applied = self.engine.was_step_applied()
        if not applied:
            self._skipped_update()
        self.profiler.boundary(self.state.step)
        self._after_step(window, extra, lrs, bar, overflow=not applied)

    def _restore_batchnorm(self, saved: list[torch.Tensor]) -> None:
        """Put back trainable BatchNorm statistics (model.frozen_bn=false) after a forward that must leave no
        trace: a skipped non-finite micro batch, the zero-frames forward of _backward_at_boundary."""
        for buf, value in zip(self.bn_stats, saved):
            buf.copy_(value)

    def _backward_at_boundary(self, batch: dict, words_only: bool, bn_before: list[torch.Tensor]) -> bool:
        """The window's last micro batch was bad or empty, and earlier ones left gradients, which DeepSpeed
        applies only after a backward at the boundary: run one on a loss of 0 that reaches every parameter,
        the forward of this batch (an empty one's stand-in) with its frames zeroed (NaN frames, the usual
        cause, gone) times 0. The update is then the good micro batches' gradients, each scaled by
        1/grad_accum as always: a bad micro batch adds 0 at the end of a window as anywhere in it. False when
        that loss is not finite on every rank either (0 times it would not be 0): nothing runs."""
        zeroed = {**batch, "frames": torch.zeros_like(batch["frames"])}
        loss, _ = training_loss(
            self.engine, zeroed, self.cfg.task.kind, self.cfg.task.aggregation, self.words, words_only
        )
        finite = bool(torch.isfinite(loss.detach().float()).item())
        if _sum_over_ranks([0.0 if finite else 1.0], self.device)[0]:
            self._restore_batchnorm(bn_before)
            return False
        self.engine.backward(loss * 0.0)
        # the zeroed frames' statistics are no data's (put back after the backward, which needs them)
        self._restore_batchnorm(bn_before)
        return True

    def _step_without_update(self, window, bar) -> None:
        """The window's last micro batch was bad or empty, and no good one before it left gradients (or a loss
        of 0 could not be formed: _backward_at_boundary): the step ends without an update, yet it counts and
        the scheduler steps, as for an fp16 overflow (_skipped_update), so the epochs keep their planned
        steps. Gradients of good micro batches, if any, stay pending in the engine and join the next
        step's."""
        lrs = self._lrs()  # the LRs this step would have applied
        if self.engine.lr_scheduler is not None:
            self.engine.lr_scheduler.step()
        if self.accumulated:
            self.log.warning(
                "step %d: no update (its last micro batch was skipped); the gradients of its %d good micro "
                "batch(es) join the next step's",
                self.state.step + 1,
                self.accumulated,
            )
        self.state.step += 1
        self.profiler.boundary(self.state.step)
        self._after_step(window, {}, lrs, bar, overflow=False)

    def _skipped_update(self) -> None:
        """DeepSpeed skipped this step's update and its scheduler step (fp16 loss-scale overflow: it lowers
        the scale instead). The step still counts, and the scheduler is stepped here. Why: a trainer step is a
        window of data, so the epochs keep their planned steps and total_steps stays right; with the step
        not counted the run would need data the epochs do not have, and with the scheduler left behind the LR
        would lag the plan and never reach 0. Only this update is lost, as with a skipped NaN batch."""
        self.state.overflow_total += 1
        if self.engine.lr_scheduler is not None:
            self.engine.lr_scheduler.step()
        self.log.warning(
            "step %d: update skipped by DeepSpeed (gradient overflow; loss scale lowered), %d in total",
            self.state.step,
            self.state.overflow_total,
        )

    def _skip_bad(self, window) -> None:
        t = self.cfg.train
        self.state.bad_total += 1
        self.state.bad_streak += 1
        window["bad"] += 1
        self.log.warning(
            "non-finite loss at step %d (epoch %d, micro batch %d): skipped (%d in a row, %d in total)",
            self.state.step,
            self.state.epoch,
            self.state.micro_in_epoch,
            self.state.bad_streak,
            self.state.bad_total,
        )
        if self.state.bad_streak >= t.max_bad_steps:
            raise TrainingDiverged(
                f"{self.state.bad_streak} non-finite losses in a row (train.max_bad_steps={t.max_bad_steps}) "
                f"at step {self.state.step}; stopping. {self._last_checkpoint_said()} Lower train.lr, enable "
                "train.grad_clip, or check the data."
            )

    def _last_checkpoint_said(self) -> str:
        """Where a stopped run's last good state is. Why: a learning rate far too high diverges within the
        first steps, and the message named a checkpoints/ folder that no step had written yet."""
        root = ckpt.checkpoint_root(self.out)
        if (root / ckpt.LATEST).is_file():
            return f"The last good checkpoint is left untouched in {root}."
        return "No checkpoint was saved before it: a rerun starts over."

    def _skip_empty(self, window, ranks: int) -> None:
        """A micro batch whose every sample was dropped as bad input on `ranks` rank(s) (the DALI loader drops
        the rows neither DALI nor PyAV decodes): skipped on every rank like a bad one, and counted apart.
        Not in bad_streak (train.max_bad_steps): undecodable files say nothing of the training diverging;
        the files themselves are counted and named by the epoch's bad-input summary."""
        self.state.empty_total += 1
        window["bad"] += 1
        self.log.warning(
            "step %d (epoch %d, micro batch %d): every sample of this micro batch was dropped as bad input "
            "on %d rank(s): skipped (%d in total)",
            self.state.step,
            self.state.epoch,
            self.state.micro_in_epoch,
            ranks,
            self.state.empty_total,
        )

    def _after_step(self, window, extra: dict, lrs: dict, bar, overflow: bool) -> None:
        t = self.cfg.train
        step = self.state.step
        average_batchnorm_statistics(self.bn_stats)  # before any evaluation, checkpoint or export
        loss = window["loss"] / window["good"] if window["good"] else None  # None: every micro batch was bad
        record = {
            "step": step,
            "epoch": self.state.epoch,
            "loss": loss,
            "skipped": window["bad"],
            "overflow": overflow,
            **lrs,
            **extra,
        }
        self._write_step(record)
        window.update(loss=0.0, good=0, bad=0)
        if bar is not None:
            bar.update(1)
        if step % t.log_every == 0 or step == self.total_steps:
            shown = "n/a" if loss is None else f"{loss:.4f}"
            perf = self.throughput.snapshot()
            self.last_perf = perf
            self.runlog.scalars(step, {**record, **perf})
            if bar is not None:
                bar.set_postfix(
                    loss=shown,
                    lr=f"{lrs.get('lr', 0):.2e}",
                    fps=f"{perf['frames_per_s']:.1f}",
                    data_wait=f"{100 * perf['data_wait_frac']:.0f}%",
                )
            else:
                mfu = perf["mfu"]
                self.log.info(
                    "step %d/%d loss %s lr %.3g frames/s %.1f MFU %s data wait %.0f%%",
                    step,
                    self.total_steps,
                    shown,
                    lrs.get("lr", 0.0),
                    perf["frames_per_s"],
                    "n/a" if mfu is None else f"{100 * mfu:.1f}%",
                    100 * perf["data_wait_frac"],
                )
        epoch_ends = self.state.micro_in_epoch == self.epoch_batches
        if step == self.total_steps and not epoch_ends and self.tracker is not None:
            # The run ends inside this epoch (train.max_steps), whose summary _epoch never reaches: its bad
            # files so far get their line now, before the final checkpoint, which then holds an epoch count
            # of 0, so that a run continued from it does not count them again.
            self._bad_input_summary(self.state.epoch)
        if t.eval_every > 0 and step % t.eval_every == 0:
            self.run_eval(self.cfg.eval.split)
        # Not on the epoch's last step: that checkpoint is written after the end-of-epoch work (_epoch).
        # Written here, a resume would find the epoch finished but not its evaluation, and run it again.
        if t.save_every > 0 and step % t.save_every == 0 and not epoch_ends:
            self.save()


def steps_per_epoch(num_batches: int, grad_accum: int) -> int:
    return max(1, math.ceil(num_batches / grad_accum))


def total_training_steps(train_cfg, num_batches: int) -> int:
    return train_cfg.max_steps or train_cfg.epochs * steps_per_epoch(num_batches, train_cfg.grad_accum)
