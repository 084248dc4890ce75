"""Where a training step's time goes: `train.profile_steps` optimizer steps timed phase by phase.

Why in the trainer and not only in the Figure-5 benchmark: a real run adds what the benchmark leaves out
(the data loader, DeepSpeed's gradient reduction and optimizer, negatives and heads), and on an H100 a
`ds_msrvtt.json`-shaped run delivered 522 frames/s where the benchmark's eager step ran 957 (2026-11-27 and
-26, docs/PERFORMANCE.md). Without a breakdown of the run itself that gap cannot be attributed.

During the profiled steps each micro batch is split into phases: `data_wait` (blocked on the loader),
`to_device`, `forward` (model and loss), `loss_check` (the NaN guard's all-reduce over ranks, so it also holds
the wait for the slowest rank), `backward` (with ZeRO's gradient reduction) and `optimizer` (`engine.step`:
clipping and AdamW at a boundary). On CUDA the device is synchronized at every phase edge,
so a phase's time includes its kernels; that costs the profiled steps their overlap, which is why profiling
is off by default and lasts a few steps. `other` is the rest of the window's wall time: logging,
checkpoints and evaluations that fall inside it. torch.profiler records the same steps: its chrome trace
(open in https://ui.perfetto.dev) and tables of the heavy ops by input shape and of the device kernels.

Outputs, per rank r, in `<output_dir>/profile/`: `step_profile_rank<r>.json` (also in perf.json as
`step_profile`), `step_profile_rank<r>.md`, `trace_rank<r>.json`.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch
from torch.autograd.profiler import record_function

from clipbert.perf.profile_tables import heavy_ops_by_shape, markdown, top_kernels
from clipbert.train.perf import batch_shape

PHASES = ("data_wait", "to_device", "forward", "loss_check", "backward", "optimizer")


class StepProfiler:
    """Times phases over `steps` optimizer steps, starting at the first step boundary at or after `start`.

    Use `phase(name)` around each part of a micro batch and `boundary(step)` after each optimizer step
    (and once before the first one). `close()` writes what was profiled if the run ended inside the window.
    """

    def __init__(self, start: int, steps: int, out_dir: Path, device: torch.device, rank: int, log):
        self.start, self.steps = start, steps
        self.dir, self.device, self.rank, self.log = Path(out_dir) / "profile", device, rank, log
        self.active = False
        self.done = steps == 0
        self.result: dict | None = None

    # ------------------------------------------------------------------ per micro batch
    @contextlib.contextmanager
    def phase(self, name: str):
        if not self.active:
            yield
            return
        self._sync()
        begin = time.perf_counter()
        with record_function(name):
            yield
        self._sync()
        self.times[name] += time.perf_counter() - begin

    def add_batch(self, batch: dict) -> None:
        """Count a trained micro batch's frames while profiling (the loop calls this every micro batch)."""
        if self.active:
            b, n, t, _, _ = batch_shape(batch)
            self.frames += b * n * t

    # ------------------------------------------------------------------ per optimizer step
    def boundary(self, step: int) -> None:
        """Called with the optimizer steps done: before the first micro batch and after each step."""
        if self.active and step >= self.first + self.steps:
            self._finish(step)
        elif not self.active and not self.done and step >= self.start:
            self._begin(step)

    def close(self, step: int) -> None:
        if self.active:
            self._finish(step)

    # ------------------------------------------------------------------ internals
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _begin(self, step: int) -> None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.prof = torch.profiler.profile(activities=activities, record_shapes=True)
        self.prof.start()
        self.active, self.first, self.frames = True, step, 0
        self.times = dict.fromkeys(PHASES, 0.0)
        self._sync()
        self.began = time.perf_counter()

    def _finish(self, step: int) -> None:
        self._sync()
        wall = time.perf_counter() - self.began
        self.prof.stop()
        self.active, self.done = False, True
        steps = step - self.first
        if steps == 0:  # the run ended right after the window opened: nothing to report
            return
        on_device = self.device.type == "cuda"
        ms = {name: 1e3 * seconds / steps for name, seconds in self.times.items()}
        ms["other"] = max(0.0, 1e3 * wall / steps - sum(ms.values()))
        step_ms = 1e3 * wall / steps
        self.result = {
            "steps": [self.first + 1, step],  # the optimizer steps profiled, inclusive
            "device": str(self.device),
            "synchronized_phases": on_device,
            "step_ms": step_ms,
            "frames_per_s": self.frames / wall if wall > 0 else 0.0,  # this rank, while profiled
            "phase_ms_per_step": ms,
            "phase_share": {name: value / step_ms for name, value in ms.items()} if step_ms else {},
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        stem = f"rank{self.rank}"
        (self.dir / f"step_profile_{stem}.json").write_text(json.dumps(self.result, indent=2) + "\n")
        self.prof.export_chrome_trace(str(self.dir / f"trace_{stem}.json"))
        ops = heavy_ops_by_shape(self.prof, on_device, steps)
        kernels = top_kernels(self.prof, steps) if on_device else []
        sort_by = "self_device_time_total" if on_device else "self_cpu_time_total"
        table = self.prof.key_averages().table(sort_by=sort_by, row_limit=30, max_name_column_width=80)
        (self.dir / f"step_profile_{stem}.md").write_text(
            self._breakdown_markdown()
            + "\n"
            + markdown(ops, kernels, on_device)
            + "\n```\n"
            + table
            + "\n```\n"
        )
        self.prof = None
        if self.rank == 0:
            parts = ", ".join(f"{name} {ms[name]:.1f} ms ({100 * ms[name] / step_ms:.0f}%)" for name in ms)
            self.log.info(
                "profile of steps %d-%d (rank 0): %.1f ms a step: %s; tables and trace in %s",
                self.first + 1,
                step,
                step_ms,
                parts,
                self.dir,
            )

    def _breakdown_markdown(self) -> str:
        r = self.result
        sync = "synchronized at every phase edge" if r["synchronized_phases"] else "host time"
        lines = [
            f"# Training steps {r['steps'][0]}-{r['steps'][1]}, rank {self.rank}, {r['device']} ({sync})",
            "",
            f"{r['step_ms']:.1f} ms a step, {r['frames_per_s']:.1f} frames/s on this rank while profiled.",
            "",
            "| phase | ms/step | share |",
            "|---|---|---|",
        ]
        for name, value in r["phase_ms_per_step"].items():
            lines.append(f"| {name} | {value:.2f} | {100 * r['phase_share'][name]:.1f}% |")
        return "\n".join(lines) + "\n"
