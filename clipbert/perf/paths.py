"""The two training paths the Figure-5 benchmark compares, built from one model configuration.

`eager` is the original code's way: NCHW, eager PyTorch ops (clip aggregation by torch.logsumexp + NLL,
temporal mean by x.mean), no activation checkpointing, bf16 autocast. `optimized` stacks the project's
options; each one is a field of `PathOptions`, so a run can add them one at a time and measure each step.
Every option keeps the function: the same weights give the same loss and gradients up to bf16 rounding
(tests/test_bench_paths.py checks it against the eager path).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.autograd.profiler import record_function
from torch.utils.checkpoint import checkpoint

from clipbert.perf.frozen_fuse import fuse_frozen_prefix
from clipbert.perf.stem import PaddedStemConv, SpaceToDepthStemConv
from clipbert.perf.trainable_fuse import fuse_trainable_stages

RECOMPILE_LIMIT = 1024  # graphs per compiled function: one per benchmark shape (_compile)

CNN_CHECKPOINTS = ("none", "stage", "chunk")
COMPILES = ("none", "cnn", "full")


@dataclasses.dataclass(frozen=True)
class PathOptions:
    name: str
    channels_last: bool = False  # CNN weights and frames in torch.channels_last (NHWC tensor cores)
    fused_ops: bool = False  # clipbert.ops kernels (fused LSE + NLL, temporal mean) instead of eager PyTorch
    # Store the frozen convolutions' weights in bf16: no per-step autocast casts. FrozenBN buffers stay fp32
    # (FrozenBatchNorm2d casts its folded scale and shift to the input's dtype), so the function is unchanged.
    bf16_frozen: bool = False
    # "stage": the model's per-stage checkpoint; "chunk": the whole visual encoder checkpointed per chunk
    # of about `cnn_chunk_frames` frames (whole clips: max(1, cnn_chunk_frames // T) of them), so backward
    # recomputes one chunk at a time and peak activation memory is
    # bounded by a chunk, not by the batch (micro-batching the CNN inside the step).
    checkpoint_cnn: str = "none"
    cnn_chunk_frames: int = 32
    checkpoint_transformer: bool = False  # per-BERT-layer checkpoint (the model's option)
    # No attention mask: the benchmark's texts are never padded, and without a mask SDPA may pick flash
    # attention (a boolean mask, even an all-true one, rules it out).
    unpadded_text: bool = False
    compile: str = "none"  # "cnn": torch.compile the visual encoder; "full": the whole loss function
    compile_mode: str | None = None  # torch.compile mode ("max-autotune-no-cudagraphs", "reduce-overhead")
    # cuDNN times its algorithms for each new convolution shape and keeps the fastest (the step's shapes are
    # fixed, so it pays once); off, it takes its heuristics' pick, as the original code ran. Set for the step.
    cudnn_benchmark: bool = False
    # "bf16": autocast, as both benchmarked paths run; "fp32": no autocast, for checking that an option
    # keeps the function to fp32 accuracy (bf16 rounding noise would hide a real difference).
    precision: str = "bf16"
    # Input channels of the (frozen) stem convolution: 3, or the RGB frame zero-padded to 4 or 8 channels with
    # zero weights for the extra ones (the same function; clipbert/perf/stem.py says why).
    stem_channels: int = 3
    # The stride-2 stem as a stride-1 convolution on 2x2 space-to-depth blocks of those channels
    # (SpaceToDepthStemConv): 4 channels make 16, with 1.7x the stem's products instead of padding's 2.7x.
    stem_s2d: bool = False
    # The frozen prefix's convolutions with their frozen norms folded in and bias, residual and ReLU fused
    # into cuDNN's epilogue (clipbert/perf/frozen_fuse.py says why).
    fuse_frozen: bool = False
    # The trainable stages' convolutions the same way, their norms folded on every step (the weights stay
    # trainable) and the backward through aten.convolution_backward (clipbert/perf/trainable_fuse.py).
    fuse_trainable: bool = False

    def __post_init__(self) -> None:
        if self.checkpoint_cnn not in CNN_CHECKPOINTS:
            raise ValueError(f"checkpoint_cnn must be one of {CNN_CHECKPOINTS}, got {self.checkpoint_cnn!r}")
        if self.compile not in COMPILES:
            raise ValueError(f"compile must be one of {COMPILES}, got {self.compile!r}")
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be 'bf16' or 'fp32', got {self.precision!r}")
        if self.precision == "fp32" and self.bf16_frozen:
            raise ValueError("bf16_frozen needs precision='bf16'")
        if self.cnn_chunk_frames < 1:
            raise ValueError(f"cnn_chunk_frames must be >= 1, got {self.cnn_chunk_frames}")
        if self.stem_channels not in (3, 4, 8):
            raise ValueError(f"stem_channels must be 3, 4 or 8, got {self.stem_channels}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


EAGER = PathOptions("eager")
# For speed at batch 8 (memory is not the limit there, so no recomputation).
OPTIMIZED_SPEED = PathOptions(
    "optimized", channels_last=True, fused_ops=True, bf16_frozen=True, unpadded_text=True, compile="cnn"
)
# For the largest batch: everything that lowers peak memory, checkpointing included.
OPTIMIZED_MEMORY = PathOptions(
    "optimized",
    channels_last=True,
    fused_ops=True,
    bf16_frozen=True,
    unpadded_text=True,
    checkpoint_cnn="chunk",
    cnn_chunk_frames=32,
    checkpoint_transformer=True,
)


def ablation_ladder(compile_cnn: bool = True) -> list[PathOptions]:
    """Cumulative steps from eager to optimized, each measured on its own in the GPU run."""
    steps = [
        EAGER,
        PathOptions("+channels_last", channels_last=True),
        PathOptions("+fused_ops", channels_last=True, fused_ops=True),
        PathOptions("+bf16_frozen", channels_last=True, fused_ops=True, bf16_frozen=True),
    ]
    steps.append(dataclasses.replace(steps[-1], name="+no_text_mask", unpadded_text=True))
    if compile_cnn:
        steps.append(dataclasses.replace(OPTIMIZED_SPEED, name="+compile_cnn"))
    base = steps[-1]
    if compile_cnn:
        # The transformer of 16 clips x 8 videos is short sequences in many small kernels: the H100 profile
        # (benchmarks/results/fig5_h100_2026-11-26.md) put it at 37 ms of a 75 ms step. Compiling
        # the whole loss fuses its elementwise work; CUDA graphs ("reduce-overhead") also drop the launches.
        # The CNN's 44.6 ms there is about a quarter of the card's bf16 peak: cuDNN's timed algorithm choice
        # is the cheap thing to try for it.
        full = dataclasses.replace(base, name="+compile_full", compile="full")
        tuned = dataclasses.replace(full, name="+cudnn_benchmark", cudnn_benchmark=True)
        steps += [
            full,
            tuned,
            dataclasses.replace(tuned, name="+cuda_graphs", compile_mode="reduce-overhead"),
            # From the timed cuDNN choice, not the graphs (which cost a slower compile for 1%).
            dataclasses.replace(tuned, name="+stem_pad8", stem_channels=8),
            # The other rewrite of the same stem, also from the timed cuDNN choice (not cumulative).
            dataclasses.replace(tuned, name="+stem_s2d", stem_channels=4, stem_s2d=True),
            dataclasses.replace(tuned, name="+fuse_frozen", stem_channels=4, stem_s2d=True, fuse_frozen=True),
        ]
        steps.append(dataclasses.replace(steps[-1], name="+fuse_trainable", fuse_trainable=True))
    steps += [
        dataclasses.replace(base, name="+ckpt_stage", checkpoint_cnn="stage"),
        dataclasses.replace(base, name="+ckpt_chunk", checkpoint_cnn="chunk"),
        dataclasses.replace(
            base, name="+ckpt_chunk+ckpt_bert", checkpoint_cnn="chunk", checkpoint_transformer=True
        ),
    ]
    if compile_cnn:
        # Last, as its compile may take minutes: inductor times Triton templates against cuBLAS/cuDNN for
        # every GEMM and convolution of the whole loss. On the H200 (2026-11-27) the compiled loss reached
        # 33% MFU, CUDA graphs added 1% and cuDNN's timed choice nothing; the MFU target is 35%.
        steps.append(
            dataclasses.replace(tuned, name="+max_autotune", compile_mode="max-autotune-no-cudagraphs")
        )
    return steps


@dataclasses.dataclass
class Batch:
    frames: torch.Tensor  # [B, N, T, 3, L, L] float32, normalized
    input_ids: torch.Tensor  # [B, M, Lt] int64
    attention_mask: torch.Tensor  # [B, M, Lt] int64
    labels: torch.Tensor  # [B, M] int64, 1 = the text matches the video (itm head)

    @property
    def num_frames(self) -> int:
        b, n, t = self.frames.shape[:3]
        return b * n * t


def make_batch(
    cfg, batch: int, n_clips: int, frames_per_clip: int, device, *, texts: int = 1, seed: int = 0
) -> Batch:
    """Random inputs of the benchmark's shapes: text length cfg.max_text_len, `[CLS] words [SEP]`."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    L, Lt = cfg.image_size, cfg.max_text_len
    frames = torch.randn(batch, n_clips, frames_per_clip, 3, L, L, generator=gen)
    first_word = min(1000, cfg.vocab_size // 2)  # past the bundled vocabulary's special tokens
    ids = torch.randint(first_word, cfg.vocab_size, (batch, texts, Lt), generator=gen)
    ids[..., 0], ids[..., -1] = 101, 102  # [CLS] ... [SEP] of the bundled uncased vocabulary
    mask = torch.ones(batch, texts, Lt, dtype=torch.int64)
    labels = torch.randint(0, 2, (batch, texts), generator=gen)
    return Batch(frames.to(device), ids.to(device), mask.to(device), labels.to(device))


def _import_ops():
    try:
        import clipbert.ops as ops
    except ImportError:
        return None
    return ops if hasattr(ops, "lse_aggregate_nll") else None


def eager_lse_nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The original code's LSE clip aggregation + NLL in eager PyTorch. logits [B, N, K], target [B]."""
    logits = logits.float()
    log_probs = torch.logsumexp(logits, dim=1) - torch.logsumexp(logits.flatten(1), dim=1, keepdim=True)
    return F.nll_loss(log_probs, target)


def _concat_visual(parts: list, batch: int, n_clips: int):
    """Concatenate VisualTokens of clip chunks ([c, 1, ...] tensors) back into [B, N, ...]."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts).view(batch, n_clips, *first.shape[2:])
    if not dataclasses.is_dataclass(first):
        raise TypeError(f"encode_visual returned {type(first).__name__}; expected a tensor or a dataclass")
    values = {}
    for field in dataclasses.fields(first):
        items = [getattr(p, field.name) for p in parts]
        if isinstance(items[0], torch.Tensor) and items[0].dim() >= 2 and items[0].shape[1] == 1:
            values[field.name] = torch.cat(items).view(batch, n_clips, *items[0].shape[2:])
        else:
            values[field.name] = items[0]
    return dataclasses.replace(first, **values)


class TrainStep:
    """One training step of `model` under `options`: `loss(batch)`, `forward_backward(batch)` and
    `train_step(batch)` (with an AdamW update). Build it with `build_train_step`, which gives the model
    the configuration flags the options need; this class applies the rest (layout, bf16, compile).
    """

    def __init__(self, model: torch.nn.Module, options: PathOptions, device, *, optimizer: bool = True):
        self.model = model.to(device).train()
        self.options = options
        self.device = torch.device(device)
        self.notes: list[str] = []  # what could not be applied, for the JSON record
        self._ops = _import_ops()
        if options.fused_ops and self._ops is None:
            self.notes.append("fused ops unavailable (clipbert.ops not importable): eager aggregation used")
        if options.channels_last:
            _conv2d_channels_last(self.model)
        if options.bf16_frozen:
            self._cast_frozen_bf16()
        if options.stem_channels != 3 or options.stem_s2d:
            self._rewrite_stem(options)
        if options.fuse_frozen:
            fused = fuse_frozen_prefix(self.model.cnn.backbone)
            self.notes.append(f"fuse_frozen: {fused} frozen modules run as convolutions with fused epilogues")
        if options.fuse_trainable:
            fused = fuse_trainable_stages(self.model.cnn.backbone)
            self.notes.append(f"fuse_trainable: {fused} trainable blocks with folded norms, fused epilogues")
        self._encode = self.model.encode_visual
        self._loss_fn: Callable[[Batch], torch.Tensor] = self._loss
        self._compile()
        params = [p for p in self.model.parameters() if p.requires_grad]
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(params, lr=1e-5, fused=fused) if optimizer else None

    # --- setup ---
    def _cast_frozen_bf16(self) -> None:
        # Frozen convolutions never see an optimizer, so bf16 storage only moves the rounding that autocast
        # applies on every forward to load time (autocast caches casts of trainable weights only).
        cast = 0
        for module in self.model.modules():
            if isinstance(module, torch.nn.Conv2d) and not any(p.requires_grad for p in module.parameters()):
                module.to(torch.bfloat16)
                cast += 1
        self.notes.append(f"bf16_frozen: {cast} frozen convolutions stored in bf16")

    def _rewrite_stem(self, options: PathOptions) -> None:
        backbone, channels = self.model.cnn.backbone, options.stem_channels
        if options.stem_s2d:
            backbone.conv1 = SpaceToDepthStemConv(backbone.conv1, channels)
            self.notes.append(f"stem_s2d: the stem is a stride-1 convolution on {4 * channels} channels")
        else:
            backbone.conv1 = PaddedStemConv(backbone.conv1, channels)
            self.notes.append(f"stem_channels: the stem convolution reads {channels} channels (RGB + zeros)")

    def _compile(self) -> None:
        o = self.options
        if o.compile == "none":
            return
        kwargs = {} if o.compile_mode is None else {"mode": o.compile_mode}
        # A fresh model per path: forget graphs guarded on the previous model, so they neither pile up
        # towards dynamo's recompile limit (past it, dynamo silently runs eager) nor get reused.
        torch._dynamo.reset()
        # One compiled function serves every point of a path: panels (b) and (d) alone are 9 input shapes
        # by default, and past dynamo's limit of 8 recompiles the 9th ((d) T=16) ran uncompiled under the
        # "optimized" label; each batch a search probes is one more shape. Every shape gets its own graph.
        for key in ("recompile_limit", "accumulated_recompile_limit"):
            setattr(torch._dynamo.config, key, max(getattr(torch._dynamo.config, key), RECOMPILE_LIMIT))
        if o.compile == "cnn":
            self._encode = torch.compile(self.model.encode_visual, **kwargs)
        else:
            self._loss_fn = torch.compile(self._loss, **kwargs)

    # --- the step ---
    def _autocast(self):
        if self.options.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _ops_backend(self):
        if self._ops is None or not hasattr(self._ops, "set_backend"):
            return contextlib.nullcontext()
        return _Backend(self._ops, "auto" if self.options.fused_ops else "reference")

    def encode(self, frames: torch.Tensor):
        """Visual tokens of frames [B, N, T, 3, L, L], chunked and checkpointed per the options."""
        o = self.options
        if o.checkpoint_cnn != "chunk" or not torch.is_grad_enabled():
            return self._encode_cast(frames)
        b, n = frames.shape[:2]
        clips = frames.reshape(b * n, 1, *frames.shape[2:])  # [B*N, 1, T, 3, L, L]: one clip per row
        # Each chunk's checkpoint keeps only a view of the input batch (no copy): the cast and layout
        # change happen inside, so they are redone in backward instead of held.
        parts = [
            checkpoint(self._encode_cast, chunk, use_reentrant=False)
            for chunk in clips.split(max(1, o.cnn_chunk_frames // frames.shape[2]))
        ]
        return _concat_visual(parts, b, n)

    def _encode_cast(self, frames: torch.Tensor):
        o = self.options
        dtype = torch.bfloat16 if o.precision == "bf16" and o.bf16_frozen else frames.dtype
        if dtype != frames.dtype or o.channels_last:
            # One copy for both the bf16 cast (autocast would cast for the first convolution anyway) and
            # the NHWC layout, instead of one each; the model's own channels_last conversion is then a no-op.
            flat = frames.reshape(-1, *frames.shape[-3:])  # [B*N*T, 3, L, L]
            flat = flat.to(
                dtype=dtype, memory_format=torch.channels_last if o.channels_last else torch.preserve_format
            )
            frames = flat.view(frames.shape)
        return self._encode(frames)

    def _loss(self, batch: Batch) -> torch.Tensor:
        # The named ranges are what the profile breakdown (clipbert/perf/profile.py) groups by.
        with record_function("cnn_forward"):
            visual = self.encode(batch.frames)
        with record_function("transformer_forward"):
            mask = None if self.options.unpadded_text else batch.attention_mask
            scores = self.model.score(visual, batch.input_ids, mask)  # [B, M, N, K]
        with record_function("clip_aggregation_loss"):
            b, m, n, k = scores.shape
            logits = scores.reshape(b * m, n, k)
            target = batch.labels.reshape(b * m)
            if self.options.fused_ops and self._ops is not None:
                return self._ops.lse_aggregate_nll(logits, target)
            return eager_lse_nll(logits, target)

    def loss(self, batch: Batch) -> torch.Tensor:
        with self._ops_backend(), self._autocast():
            return self._loss_fn(batch)

    def forward_backward(self, batch: Batch) -> torch.Tensor:
        with cudnn_benchmark(self.options.cudnn_benchmark):  # backward picks its convolutions too
            loss = self.loss(batch)
            with record_function("backward"):
                loss.backward()
        return loss.detach()

    def train_step(self, batch: Batch) -> torch.Tensor:
        assert self.optimizer is not None, "TrainStep was built with optimizer=False"
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.forward_backward(batch)
        with record_function("optimizer"):
            self.optimizer.step()
        return loss

    def resident_tensors(self) -> list[torch.Tensor]:
        """Weights, buffers and optimizer state: what lives across steps (CPU memory accounting)."""
        out = list(self.model.parameters()) + list(self.model.buffers())
        if self.optimizer is not None:
            for state in self.optimizer.state.values():
                out += [v for v in state.values() if isinstance(v, torch.Tensor)]
        return out


def _conv2d_channels_last(model: torch.nn.Module) -> None:
    """The 2-D convolutions' weights in torch.channels_last. Not model.to(memory_format=...): that also takes
    5-D weights (the Conv3d of the conv3d and conv2plus1d temporal fusions) and raised on them."""
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.to(memory_format=torch.channels_last)


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool):
    """torch.backends.cudnn.benchmark = enabled for the duration (a process-wide flag; paths share it)."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


class _Backend:
    """Set clipbert.ops' process-wide backend for the duration of a step, then restore it."""

    def __init__(self, ops, name: str):
        self.ops, self.name = ops, name

    def __enter__(self):
        self.previous = self.ops.get_backend()
        self.ops.set_backend(self.name)

    def __exit__(self, *exc):
        self.ops.set_backend(self.previous)


def path_config(cfg, options: PathOptions):
    """`cfg` with the model-side flags `options` needs (the model engineer's options, read at build)."""
    return dataclasses.replace(
        cfg,
        channels_last=options.channels_last,
        checkpoint_cnn=options.checkpoint_cnn == "stage",
        checkpoint_transformer=options.checkpoint_transformer,
    )


def build_train_step(
    cfg, options: PathOptions, device, *, seed: int = 0, optimizer: bool = True
) -> TrainStep:
    """A fresh ClipBert for `options`; the same `seed` gives every path the same initial weights."""
    from clipbert.models import ClipBert

    torch.manual_seed(seed)
    model = ClipBert(path_config(cfg, options))
    return TrainStep(model, options, device, optimizer=optimizer)
