"""The frozen CNN prefix (stem and res2 under FREEZE_AT=2) as convolutions with fused epilogues.

Why: the frozen prefix runs forward only, at the largest feature maps of the network (112 x 112 at L=448), and
every convolution there is followed by a frozen BatchNorm, a ReLU and, at a block's end, the residual add.
Compiled, those are separate elementwise kernels that read and write each map again: by arithmetic (not
measured) about 2.5 GB a res2 block at 128 frames, so about 7.5 GB over the three blocks, which would take
1.6 ms at the H200's 4.8 TB/s. Folding each
frozen BatchNorm into its convolution (w * scale, bias = shift) leaves conv + bias (+ residual) + ReLU,
which cuDNN runs as one fused kernel (the op of clipbert/perf/conv_epilogue.py).

Folding reorders the arithmetic (the scale multiplies the weights, not the output), so results match to
rounding: tests check the float64 function. The weights are folded once, so the rewrite is for frozen layers
only (clipbert/perf/trainable_fuse.py folds trainable ones on every step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipbert.models.resnet import Bottleneck, FrozenBatchNorm2d
from clipbert.perf.conv_epilogue import conv_bias_relu, layout


def fold(conv: nn.Conv2d | nn.Module, bn: FrozenBatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight * scale, shift): the convolution followed by the frozen norm, as one convolution with bias."""
    if not isinstance(bn, FrozenBatchNorm2d):
        raise ValueError(f"fuse_frozen folds FrozenBatchNorm2d only, got {type(bn).__name__}")
    if any(p.requires_grad for p in conv.parameters()):
        raise ValueError(
            "fuse_frozen needs frozen convolutions (freeze_at >= 1): their weights are folded once"
        )
    if getattr(conv, "bias", None) is not None:
        raise ValueError("fuse_frozen folds bias-free convolutions (the ResNet's)")
    w = conv.weight.detach()
    acc = torch.promote_types(w.dtype, torch.float32)  # fold bf16 weights in fp32, float64 ones in float64
    scale = bn.weight.to(acc) * (bn.running_var.to(acc) + bn.eps).rsqrt()
    shift = bn.bias.to(acc) - bn.running_mean.to(acc) * scale
    folded = (w.to(acc) * scale.view(-1, 1, 1, 1)).to(w.dtype)
    return folded.contiguous(memory_format=layout(w)), shift.to(w.dtype)


class FusedConvBNReLU(nn.Module):
    """relu(bn(conv(x))) of a frozen stem: the stem rewrites of clipbert/perf/stem.py keep their input
    transform (`prepare`) and their stride and padding."""

    def __init__(self, conv: nn.Module, bn: FrozenBatchNorm2d):
        super().__init__()
        weight, bias = fold(conv, bn)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.prepare = getattr(conv, "prepare", None)
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        if getattr(conv, "dilation", (1, 1)) != (1, 1) or getattr(conv, "groups", 1) != 1:
            raise ValueError("fuse_frozen fuses convolutions without dilation or groups")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.prepare is not None:
            x = self.prepare(x)
        return conv_bias_relu(x, self.weight, self.bias, None, self.stride, self.padding)


class FusedBottleneck(nn.Module):
    """A frozen Bottleneck with its norms folded: three fused convolutions, the last adding the shortcut."""

    def __init__(self, block: Bottleneck):
        super().__init__()
        self.c1, self.c2, self.c3 = (
            FusedConvBNReLU(block.conv1, block.bn1),
            FusedConvBNReLU(block.conv2, block.bn2),
            _Folded(block.conv3, block.bn3),
        )
        self.shortcut = None if block.downsample is None else _Folded(*block.downsample)
        # The shortcut's bias joins the last convolution's, so the shortcut is a bare convolution: no
        # elementwise pass over the block's largest map between it and the fused epilogue.
        bias = self.c3.bias if self.shortcut is None else self.c3.bias + self.shortcut.bias
        self.register_buffer("out_bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut.conv_without_bias(x)
        out = self.c2(self.c1(x))
        return conv_bias_relu(out, self.c3.weight, self.out_bias, identity, self.c3.stride, self.c3.padding)


class _Folded(nn.Module):
    """A frozen convolution + norm folded into weight and bias (no ReLU): a shortcut, or the convolution
    that FusedBottleneck ends with; FusedBottleneck adds both biases in its last fused epilogue."""

    def __init__(self, conv: nn.Conv2d, bn: FrozenBatchNorm2d):
        super().__init__()
        weight, bias = fold(conv, bn)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.stride, self.padding = list(conv.stride), list(conv.padding)

    def conv_without_bias(self, x: torch.Tensor) -> torch.Tensor:  # the consumer adds self.bias
        return F.conv2d(x, self.weight.to(x.dtype), None, self.stride, self.padding)


def fuse_frozen_prefix(backbone: nn.Module) -> int:
    """Rewrite the frozen stem and frozen stages of a ResNetBackbone in place; returns the modules fused."""
    if backbone.freeze_at < 1:
        raise ValueError("fuse_frozen needs a frozen stem (freeze_at >= 1)")
    backbone.conv1 = FusedConvBNReLU(backbone.conv1, backbone.bn1)
    backbone.bn1 = nn.Identity()  # the backbone's own ReLU after it is then a no-op (fused into the pool)
    fused = 1
    for stage in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)[
        : backbone.freeze_at - 1
    ]:
        for i, block in enumerate(stage):
            stage[i] = FusedBottleneck(block)
            fused += 1
    return fused
