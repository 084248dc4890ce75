"""The trainable ResNet stages (res3..res5 under FREEZE_AT=2) with fused convolution epilogues.

Why: in the trainable stages every convolution is followed by a frozen norm (a per-channel affine), a ReLU
or, at a block's end, the residual add and a ReLU. Compiled, cuDNN writes each convolution's output and a
pointwise kernel reads it back and writes the activation. At 128 frames of 448 x 448 those outputs are about
21M values a frame, 5.5 GB a step in bf16, so the round trip moves about 11 GB a step forward (arithmetic,
not measured): 2.3 ms at the H200's 4.8 TB/s. Here each norm's scale is folded into its convolution's weight
on every step (w * scale: a few MB of weights, not the maps), its shift is the bias, and cuDNN's fused
epilogue adds the bias and the shortcut and applies the ReLU (clipbert/perf/conv_epilogue.py). The backward
is what it was: the ReLU's mask, then the convolution's input and weight gradients; autograd carries the
weight gradient through the fold (d/dw = scale * d/dw').

The weights stay trainable and keep their names: the rewritten block holds the block's own submodules, so
parameters, state dicts and optimizer state are unchanged. The norms must be frozen (FrozenBatchNorm2d, as
the original backbone's); a BatchNorm that learns statistics cannot be folded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipbert.models.resnet import Bottleneck, FrozenBatchNorm2d
from clipbert.perf.conv_epilogue import conv_bias_relu


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """What the block's convolutions compute in: autocast's dtype where it is on (as nn.Conv2d would)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _fold(conv: nn.Conv2d, bn: nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(w * scale, shift) in `dtype`, differentiable in w: conv then the frozen norm as one conv + bias."""
    acc = torch.promote_types(conv.weight.dtype, torch.float32)  # float64 models fold in float64
    scale = bn.weight.to(acc) * (bn.running_var.to(acc) + bn.eps).rsqrt()  # [O]
    shift = bn.bias.to(acc) - bn.running_mean.to(acc) * scale
    weight = conv.weight * scale.view(-1, 1, 1, 1).to(conv.weight.dtype)  # [O, C, k, k]
    return weight.to(dtype), shift.to(dtype)


def _check(conv: nn.Module, bn: nn.Module, where: str) -> None:
    if not isinstance(bn, FrozenBatchNorm2d):
        raise ValueError(f"fuse_trainable folds FrozenBatchNorm2d only, got {type(bn).__name__} at {where}")
    plain = isinstance(conv, nn.Conv2d) and conv.dilation == (1, 1) and conv.groups == 1
    if not plain or conv.bias is not None:
        raise ValueError(f"fuse_trainable needs bias-free nn.Conv2d without dilation or groups at {where}")


class FoldedBottleneck(nn.Module):
    """Bottleneck's function with each norm folded per step and bias, shortcut and ReLU fused in cuDNN."""

    def __init__(self, block: Bottleneck, where: str = "block"):
        super().__init__()
        for i in (1, 2, 3):
            _check(getattr(block, f"conv{i}"), getattr(block, f"bn{i}"), f"{where}.conv{i}")
        if block.downsample is not None:
            _check(block.downsample[0], block.downsample[1], f"{where}.downsample")
        # The block's own modules, under the block's names: the same parameters and state dict keys.
        self.conv1, self.bn1 = block.conv1, block.bn1
        self.conv2, self.bn2 = block.conv2, block.bn2
        self.conv3, self.bn3 = block.conv3, block.bn3
        self.downsample = block.downsample

    def _conv_relu(self, x: torch.Tensor, conv: nn.Conv2d, bn: nn.Module) -> torch.Tensor:
        w, b = _fold(conv, bn, x.dtype)
        return conv_bias_relu(x, w, b, None, list(conv.stride), list(conv.padding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, 4 * width, H / s, W / s]
        x = x.to(_compute_dtype(x))
        out = self._conv_relu(self._conv_relu(x, self.conv1, self.bn1), self.conv2, self.bn2)
        w3, bias = _fold(self.conv3, self.bn3, x.dtype)
        if self.downsample is None:
            identity = x
        else:
            # The shortcut's shift joins the last convolution's bias, so the shortcut is a bare convolution
            # that the fused epilogue reads as it is.
            conv, bn = self.downsample[0], self.downsample[1]
            ws, shift = _fold(conv, bn, x.dtype)
            identity = F.conv2d(x, ws, None, conv.stride, conv.padding)
            bias = bias + shift
        c3 = self.conv3
        return conv_bias_relu(out, w3, bias, identity, list(c3.stride), list(c3.padding))


def fuse_trainable_stages(backbone: nn.Module) -> int:
    """Rewrite the Bottlenecks of the stages after the frozen ones in place; returns the blocks rewritten."""
    stages = (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)
    fused = 0
    for s, stage in enumerate(stages[max(backbone.freeze_at - 1, 0) :], start=max(backbone.freeze_at, 1)):
        for i, block in enumerate(stage):
            if isinstance(block, Bottleneck):
                stage[i] = FoldedBottleneck(block, where=f"layer{s}.{i}")
                fused += 1
    if fused == 0:
        raise ValueError("fuse_trainable found no trainable Bottleneck to rewrite")
    return fused
