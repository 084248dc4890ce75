"""Bottleneck ResNet conv1..conv5 (stride 32) in two styles, with FrozenBatchNorm and stage freezing.

Parameter names follow torchvision (conv1/bn1, layer1..layer4, downsample.0/.1), so torchvision state dicts
load as they are; clipbert.models.weights maps detectron2 names (stem, res2..res5, shortcut, .norm) onto them.

Styles (the only difference is where a stage's stride sits inside its first bottleneck):
- "torchvision": stride in the 3x3 conv (ResNet v1.5).
- "msra": stride in the first 1x1 conv (detectron2 STRIDE_IN_1X1=True, the MSRA/caffe weights ClipBERT used).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, all stored as buffers (no gradients).

    Same state-dict names as nn.BatchNorm2d (weight, bias, running_mean, running_var), like detectron2's.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # nn.BatchNorm2d checkpoints carry a counter that a frozen norm has no use for.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W]
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        shape = (1, -1, 1, 1)
        return x * scale.view(shape).to(x.dtype) + shift.view(shape).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Replace every nn.BatchNorm2d inside `module` by a FrozenBatchNorm2d holding its current values."""
        if isinstance(module, nn.BatchNorm2d):
            like = module.running_mean if module.track_running_stats else module.weight
            frozen = cls(module.num_features, module.eps).to(device=like.device, dtype=like.dtype)
            if module.affine:
                frozen.weight.copy_(module.weight.detach())
                frozen.bias.copy_(module.bias.detach())
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
            return frozen
        for name, child in module.named_children():
            new_child = cls.convert(child)
            if new_child is not child:
                setattr(module, name, new_child)
        return module


def _norm(channels: int, frozen: bool) -> nn.Module:
    return FrozenBatchNorm2d(channels) if frozen else nn.BatchNorm2d(channels)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, stride_in_1x1: bool, frozen_bn: bool):
        super().__init__()
        out_ch = width * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_ch, width, 1, stride=stride_1x1, bias=False)
        self.bn1 = _norm(width, frozen_bn)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride_3x3, padding=1, bias=False)
        self.bn2 = _norm(width, frozen_bn)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = _norm(out_ch, frozen_bn)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), _norm(out_ch, frozen_bn)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


class ResNetBackbone(nn.Module):
    """conv1 (stem) .. conv5; returns the stride-32 res5 map [B, width*32, L/32, L/32]."""

    def __init__(
        self,
        layers: tuple[int, ...] = (3, 4, 6, 3),
        width: int = 64,
        style: str = "msra",
        frozen_bn: bool = True,
        freeze_at: int = 0,
        checkpoint_stages: bool = False,
    ):
        super().__init__()
        if style not in ("msra", "torchvision"):
            raise ValueError(f"style must be 'msra' or 'torchvision', got {style!r}")
        self.style = style
        self.freeze_at = freeze_at
        self.checkpoint_stages = checkpoint_stages
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = _norm(width, frozen_bn)
        in_ch = width
        for i, blocks in enumerate(layers):
            stage_width = width * 2**i
            stage = []
            for b in range(blocks):
                stride = 2 if (b == 0 and i > 0) else 1  # res2 keeps stride 4; res5 has no dilation
                stage.append(Bottleneck(in_ch, stage_width, stride, style == "msra", frozen_bn))
                in_ch = stage_width * Bottleneck.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.out_channels = in_ch
        self._init_weights()
        self._freeze()

    def stages(self) -> list[nn.Module]:
        """[stem, res2, res3, res4, res5]; index k-1 is frozen when freeze_at >= k."""
        return [nn.ModuleList([self.conv1, self.bn1]), self.layer1, self.layer2, self.layer3, self.layer4]

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _freeze(self) -> None:
        # detectron2 FREEZE_AT: frozen stages get no gradients and their norms become FrozenBatchNorm2d.
        for stage in self.stages()[: self.freeze_at]:
            for p in stage.parameters():
                p.requires_grad_(False)
            FrozenBatchNorm2d.convert(stage)
        if self.freeze_at >= 1 and isinstance(self.bn1, nn.BatchNorm2d):
            self.bn1 = FrozenBatchNorm2d.convert(self.bn1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 3, L, L] -> [B, C5, L/32, L/32]
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        for k, stage in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), start=2):
            trainable = k > self.freeze_at
            if self.checkpoint_stages and trainable and self.training and torch.is_grad_enabled():
                x = checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
        return x
