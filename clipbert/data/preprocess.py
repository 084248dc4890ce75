"""Frame pre-processing shared by every CPU backend (DALI does the same steps on its side).

1. Resize so the longer side is L, keeping the aspect ratio (bilinear with antialias on the uint8 image, as
   DALI does, so every backend sees the same pixel values up to interpolation rounding).
2. Normalize (x - mean) / std per channel on the 0..255 scale, in the model's channel order.
3. Zero-pad right and bottom to L x L: padded pixels are 0 in the normalized tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

CHANNEL_ORDERS = ("RGB", "BGR")


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, float, float]  # per channel, 0..255 scale, in channel_order
    std: tuple[float, float, float]
    channel_order: str = "RGB"  # order of the 3 channels the model expects

    def __post_init__(self) -> None:
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be one of RGB, BGR; got {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values, got mean={self.mean} std={self.std}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be > 0, got {self.std}")


IMAGENET_RGB = Normalization((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), "RGB")
CAFFE_BGR = Normalization((103.53, 116.28, 123.675), (1.0, 1.0, 1.0), "BGR")


def normalization_for(model_cfg) -> Normalization:
    """The normalization of a model preset (`ClipBertConfig.pixel_mean/pixel_std/channel_order`)."""
    for key in ("pixel_mean", "pixel_std", "channel_order"):
        if getattr(model_cfg, key, None) is None:
            raise ValueError(f"model config has no {key}; cannot pick the pixel normalization")
    return Normalization(
        tuple(float(x) for x in model_cfg.pixel_mean),
        tuple(float(x) for x in model_cfg.pixel_std),
        model_cfg.channel_order,
    )


def resized_hw(height: int, width: int, size: int) -> tuple[int, int]:
    """Height and width after resizing the longer side to `size` (each at least 1 pixel)."""
    scale = size / max(height, width)
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def resize_frames(frames: torch.Tensor | np.ndarray, size: int) -> torch.Tensor:
    """uint8 [F, H, W, 3] RGB -> float32 [F, 3, h, w] with integer values 0..255, longer side = size."""
    frames = torch.as_tensor(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [F, H, W, 3] uint8, got shape {tuple(frames.shape)}")
    if frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    x = frames.permute(0, 3, 1, 2)  # [F, 3, H, W] uint8, channels_last in memory
    h, w = resized_hw(x.shape[-2], x.shape[-1], size)
    if (h, w) != tuple(x.shape[-2:]):
        # uint8 channels_last is torch's fast CPU resampling path (10x or more over float); it rounds its
        # fixed-point weights internally, so it may differ from a float resize by one grey level.
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return x.float()


def resize_pad(frames: torch.Tensor | np.ndarray, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """uint8 [F, H, W, 3] RGB -> (uint8 [F, 3, L, L] resized and zero-padded, content (h, w)).

    Workers ship this uint8 tensor (4x less than float32); `normalize_padded` finishes on the target device.
    """
    x = resize_frames(frames, size).to(torch.uint8)  # [F, 3, h, w]
    h, w = x.shape[-2:]
    return F.pad(x, (0, size - w, 0, size - h)), (h, w)


def normalize_padded(frames: torch.Tensor, hw, norm: Normalization) -> torch.Tensor:
    """uint8 [B, ..., 3, L, L] RGB padded frames -> float32 normalized in the model's channel order, with the
    padding (outside each sample's content `hw`, int [B, 2] or one (h, w)) set to exactly 0."""
    x = frames.float()
    if norm.channel_order == "BGR":
        x = x.flip(-3)
    mean = torch.tensor(norm.mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
    std = torch.tensor(norm.std, dtype=torch.float32, device=x.device).view(3, 1, 1)
    x.sub_(mean).div_(std)
    hw = torch.as_tensor(hw, device=x.device).view(-1, 2)  # [B, 2] or [1, 2]
    ar = torch.arange(x.shape[-1], device=x.device)
    mask = (ar.view(1, -1, 1) < hw[:, 0].view(-1, 1, 1)) & (ar.view(1, 1, -1) < hw[:, 1].view(-1, 1, 1))
    return x.mul_(mask.view(len(hw), *([1] * (x.ndim - 3)), *mask.shape[-2:]))


def preprocess_frames(frames: torch.Tensor | np.ndarray, size: int, norm: Normalization) -> torch.Tensor:
    """uint8 [F, H, W, 3] RGB -> float32 [F, 3, L, L]: resize longer side to L, normalize, zero-pad."""
    padded, hw = resize_pad(frames, size)
    return normalize_padded(padded, hw, norm)
