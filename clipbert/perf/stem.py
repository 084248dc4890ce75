"""Two rewrites of the frozen 3-channel stem convolution that compute the same function on tensor cores.

Why: with frames in NHWC a 3-channel pixel is 6 bytes (bf16), which the tensor-core convolutions' 16-byte
loads do not fit. The H100 profile of the compiled-CNN path (fig5_h100_2026-11-26_profile.md) shows one
cutlass kernel run once per step for 3.1 ms; the stem (7x7, stride 2, 128 frames at 448: 121 GFLOP) at
40 TFLOP/s fits it (that it is the stem is an inference from its time, not measured).

- `PaddedStemConv`: the frames zero-padded to 4 or 8 channels, zero weights for the extra ones. At 8 channels
  the stem does 2.7x the FLOPs (7 x 7 x 8 per output against 7 x 7 x 3).
- `SpaceToDepthStemConv`: each 2x2 block of pixels becomes one pixel of 4x the channels, and the 7x7
  stride-2 convolution becomes a 4x4 stride-1 one on that grid (the kernel zero-padded to 8x8). From 4
  channels (RGB + a zero) that is 16 channels, 32 bytes a pixel: 4 x 4 x 16 = 256 products per output,
  1.7x the original's 147, with no stride. Both only reorder sums, so they are exact up to rounding.

Both need a frozen stem: the rewritten weight is made once, at build time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _frozen_stem_weight(conv: torch.nn.Conv2d, channels: int, who: str) -> torch.Tensor:
    """The stem's weight [C_out, 3, kh, kw] zero-padded to `channels` input channels."""
    if conv.weight.requires_grad:
        raise ValueError(f"{who} needs a frozen stem (freeze_at >= 1): its weight is rewritten once")
    if conv.in_channels != 3 or channels < 3:
        raise ValueError(f"{who} pads 3 input channels to 3 or more, got {conv.in_channels} -> {channels}")
    w = conv.weight.detach()
    return torch.cat([w, w.new_zeros(w.shape[0], channels - 3, *w.shape[2:])], dim=1)


def _layout_of(w: torch.Tensor) -> torch.memory_format:
    nhwc = w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    return torch.channels_last if nhwc else torch.contiguous_format


class PaddedStemConv(torch.nn.Module):
    """The stem convolution on its input zero-padded to `channels` channels, with zero weights for the
    extra ones: the same function."""

    def __init__(self, conv: torch.nn.Conv2d, channels: int):
        super().__init__()
        if channels <= 3:
            raise ValueError(f"PaddedStemConv pads 3 input channels to more, got {channels}")
        padded = _frozen_stem_weight(conv, channels, "stem_channels")
        self.register_buffer("weight", padded.contiguous(memory_format=_layout_of(conv.weight)))
        self.bias = conv.bias
        self.stride, self.padding, self.dilation, self.groups = (
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
        )

    def prepare(self, x: torch.Tensor) -> torch.Tensor:  # [B, 3, H, W] -> [B, channels, H, W]
        return F.pad(x, (0, 0, 0, 0, 0, self.weight.shape[1] - x.shape[1]))  # zeros after the RGB channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 3, H, W] -> [B, C_out, H', W']
        return F.conv2d(
            self.prepare(x), self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )


class SpaceToDepthStemConv(torch.nn.Module):
    """A stride-2 k x k stem convolution as a stride-1 ceil(k/2) x ceil(k/2) one on 2x2 space-to-depth blocks.

    With the input padded by p on the top and left, output (i, j) sums w[di, dj] x[2i + di, 2j + dj] over
    di, dj < k. Write di = 2a + r (a < k2 = ceil(k/2), r in {0, 1}; w is zero at di = k when k is odd), and
    x[2(i + a) + r, ...] is channel (c, r, s) of the space-to-depth grid at (i + a, j + b): a plain k2 x k2
    convolution over that grid with the weight w'[o, (c, r, s), a, b] = w[o, c, 2a + r, 2b + s].
    """

    def __init__(self, conv: torch.nn.Conv2d, channels: int = 4):
        super().__init__()
        if conv.stride != (2, 2) or conv.dilation != (1, 1) or conv.groups != 1:
            raise ValueError(
                f"stem_s2d rewrites a stride-2 convolution without dilation or groups, got stride "
                f"{conv.stride}, dilation {conv.dilation}, groups {conv.groups}"
            )
        if conv.kernel_size[0] != conv.kernel_size[1] or conv.padding[0] != conv.padding[1]:
            raise ValueError(
                f"stem_s2d needs a square kernel and padding, got {conv.kernel_size}, {conv.padding}"
            )
        w = _frozen_stem_weight(conv, channels, "stem_s2d")  # [C_out, C, k, k]
        self.kernel, self.pad = conv.kernel_size[0], conv.padding[0]
        k2 = (self.kernel + 1) // 2
        w = F.pad(w, (0, 2 * k2 - self.kernel, 0, 2 * k2 - self.kernel))  # [C_out, C, 2k2, 2k2]
        o, c = w.shape[:2]
        # [o, c, (a, r), (b, s)] -> [o, (c, r, s), a, b]: the channel order space_to_depth produces.
        w = w.view(o, c, k2, 2, k2, 2).permute(0, 1, 3, 5, 2, 4).reshape(o, 4 * c, k2, k2)
        self.register_buffer("weight", w.contiguous(memory_format=_layout_of(conv.weight)))
        self.bias = conv.bias
        self.channels = channels
        self.nhwc = _layout_of(conv.weight) == torch.channels_last  # the model's layout: keep it
        # What the rewritten convolution itself runs with (frozen_fuse.py folds a norm into it).
        self.stride, self.padding, self.dilation, self.groups = (1, 1), (0, 0), (1, 1), 1

    def output_size(self, size: int) -> int:
        return (size + 2 * self.pad - self.kernel) // 2 + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 3, H, W] -> [B, C_out, H', W']
        return F.conv2d(self.prepare(x), self.weight, self.bias)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:  # [B, 3, H, W] -> [B, 4 * channels, H2, W2]
        bsz, c, h, w = x.shape
        k2 = self.weight.shape[-1]
        # The padded input spans 2 * (out + k2 - 1) rows: enough for the last output's kernel, and even.
        # (F.pad crops when that is negative: the original convolution never reads those rows either.)
        hp, wp = 2 * (self.output_size(h) + k2 - 1), 2 * (self.output_size(w) + k2 - 1)
        x = F.pad(x, (self.pad, wp - w - self.pad, self.pad, hp - h - self.pad, 0, self.channels - c))
        # [B, C, (H2, r), (W2, s)] -> [B, (C, r, s), H2, W2]
        x = x.view(bsz, self.channels, hp // 2, 2, wp // 2, 2).permute(0, 1, 3, 5, 2, 4)
        x = x.reshape(bsz, 4 * self.channels, hp // 2, wp // 2)
        return x.contiguous(memory_format=torch.channels_last) if self.nhwc else x
