"""Analytic forward FLOPs of ClipBert per video (2 FLOPs per multiply-add), for MFU.

Counted: convolutions, linear layers and the two attention matmuls (Q K^T and P V), the same set that
torch.utils.flop_counter.FlopCounterMode counts. Not counted: norms, activations, pooling, softmax,
embedding lookups and additions (memory-bound, a small fraction of the total).
Training-step FLOPs are about 3x the forward of the trainable parts (forward + 2x backward).
"""

from __future__ import annotations

from clipbert.models.config import ClipBertConfig


def _out(size: int, stride: int, kernel: int = 1, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def backbone_stage_flops(cfg: ClipBertConfig, image_size: int) -> tuple[list[int], int]:
    """FLOPs of [stem, res2, res3, res4, res5] on one L x L frame, and the side of the res5 map."""
    width = cfg.backbone_width
    side = _out(image_size, 2, 7, 3)
    stages = [2 * side * side * 3 * width * 49]  # 7x7 stem conv
    side = _out(side, 2, 3, 1)  # max-pool
    in_ch = width
    for i, blocks in enumerate(cfg.backbone_layers):
        mid = width * 2**i
        out_ch = mid * 4
        flops = 0
        for b in range(blocks):
            stride = 2 if (b == 0 and i > 0) else 1
            out_side = _out(side, stride)
            # msra puts the stride in the 1x1 conv (it runs on the output grid), torchvision in the 3x3
            conv1_side = out_side if cfg.backbone_style == "msra" else side
            flops += 2 * conv1_side**2 * in_ch * mid  # 1x1 reduce
            flops += 2 * out_side**2 * mid * mid * 9  # 3x3
            flops += 2 * out_side**2 * mid * out_ch  # 1x1 expand
            if stride != 1 or in_ch != out_ch:
                flops += 2 * out_side**2 * in_ch * out_ch  # projection shortcut
            side, in_ch = out_side, out_ch
        stages.append(flops)
    return stages, side


def backbone_flops(cfg: ClipBertConfig, image_size: int) -> tuple[int, int]:
    """FLOPs of the ResNet on one L x L frame, and the side of its res5 map."""
    stages, side = backbone_stage_flops(cfg, image_size)
    return sum(stages), side


def visual_flops(cfg: ClipBertConfig, frames_per_clip: int, image_size: int) -> tuple[int, int]:
    """FLOPs to turn one clip of T frames into visual tokens, and the token count Lv."""
    cnn, side = backbone_flops(cfg, image_size)
    h = cfg.hidden_size
    flops = frames_per_clip * (cnn + 2 * side * side * cfg.backbone_out_channels * h * 9)  # + grid encoder
    grid = side // 2  # 2x2 max-pool
    taps = {"mean": 0, "conv3d": 27, "conv2plus1d": 9 + 3}[cfg.temporal_fusion]
    flops += 2 * frames_per_clip * grid * grid * h * h * taps
    return flops, grid * grid


def transformer_flops(cfg: ClipBertConfig, seq_len: int, text_len: int = 0, pretrain: bool = False) -> int:
    """FLOPs of the BERT encoder + pooler + heads on one sequence of seq_len tokens.

    The heads: the task's 2-layer classifier on the pooled output, or for pre-training (pretrain_forward)
    the ITM head on it and the MLM head on the text_len text positions: a dense transform, then the tied
    projection onto the vocabulary (at the tiny preset's 128 hidden, the largest matmul in the model)."""
    h, inter = cfg.hidden_size, cfg.intermediate_size
    per_layer = 2 * seq_len * h * (4 * h + 2 * inter)  # Q, K, V, output projections + FFN
    per_layer += 2 * 2 * seq_len * seq_len * h  # Q K^T and P V over all heads
    if pretrain:
        head = 2 * (h * h + h * 2)  # pooler dense + ITM (seq_relationship)
        head += 2 * text_len * (h * h + h * cfg.vocab_size)  # MLM transform + vocabulary projection
    else:
        head = 2 * (h * h + h * 2 * h + 2 * h * cfg.num_classes)  # pooler dense + 2-layer classifier
    return cfg.num_layers * per_layer + head


def forward_flops(
    cfg: ClipBertConfig,
    num_clips: int,
    frames_per_clip: int,
    text_len: int,
    num_texts: int = 1,
    *,
    image_size: int | None = None,
    pixel_sampling: bool = False,
    pretrain: bool = False,
) -> int:
    """Forward FLOPs of ClipBert for one video: N clips of T frames, M texts of length Lt, eval mode.

    The CNN runs once per clip (N*T frames), the transformer once per (text, clip) pair (M*N sequences of
    Lt + Lv tokens). pixel_sampling=True counts Lv as cfg.pixel_random_sampling_size (train-mode sampling).
    pretrain=True counts pretrain_forward's MLM and ITM heads instead of the task head.
    """
    clip_flops, num_tokens = visual_flops(cfg, frames_per_clip, image_size or cfg.image_size)
    if pixel_sampling and 0 < cfg.pixel_random_sampling_size < num_tokens:
        num_tokens = cfg.pixel_random_sampling_size
    seq_flops = transformer_flops(cfg, text_len + num_tokens, text_len, pretrain)
    return int(num_clips * clip_flops + num_texts * num_clips * seq_flops)


def training_flops(
    cfg: ClipBertConfig,
    num_clips: int,
    frames_per_clip: int,
    text_len: int,
    num_texts: int = 1,
    *,
    image_size: int | None = None,
    pretrain: bool = False,
) -> int:
    """FLOPs of one training step per video: 3x the forward (forward + input and weight gradients),
    except the frozen CNN prefix (stem..res{freeze_at}), which runs forward only: nothing before it
    needs gradients. Train-mode pixel random sampling is counted; pretrain as in forward_flops."""
    forward = forward_flops(
        cfg,
        num_clips,
        frames_per_clip,
        text_len,
        num_texts,
        image_size=image_size,
        pixel_sampling=True,
        pretrain=pretrain,
    )
    stages, _ = backbone_stage_flops(cfg, image_size or cfg.image_size)
    frozen = num_clips * frames_per_clip * sum(stages[: cfg.freeze_at])
    return int(3 * forward - 2 * frozen)
