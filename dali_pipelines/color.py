"""DALI's YUV->RGB conversion is BT.601 whatever the stream's tag; PyAV's follows the tag. This corrects
DALI's frames of videos tagged with another matrix (BT.709, BT.2020 non-constant luminance, SMPTE 240M,
FCC) to what PyAV gives, so every backend sees the same colours.

Why it matters: most HD web video is tagged BT.709. DALI's CPU and NVDEC paths both convert by BT.601, so
a red of (217, 28, 28) came out (202, 10, 32), 12.6 grey levels apart on average (up to 76), and training
through DALI saw other colours than evaluation through PyAV or the frame store (built with PyAV).

The fix is exact up to clipping: both matrices are linear maps of the same Y'PbPr values, so the frames
DALI converted by BT.601 are mapped back to Y'PbPr and forward by the tagged matrix with one 3x3 matrix,
which also commutes with the linear resize. It runs on DALI's normalized output, inside each frame's resized
area. BT.2020's constant-luminance form ("bt2020c") is no such linear map, and is left as DALI converts it.
"""

from __future__ import annotations

import torch

# Kr, Kb of each YUV matrix, keyed by the names the probe gives FFmpeg's tags (clipbert.data.decoders.pyav
# COLORSPACES: 1 bt709, 4 fcc, 7 smpte240m, 9 bt2020nc); BT.470BG and SMPTE 170M (5, 6) are BT.601's. FFmpeg's
# swscale, which PyAV converts with, uses these weights for these tags.
LUMA_WEIGHTS = {
    "bt601": (0.299, 0.114),
    "bt709": (0.2126, 0.0722),
    "fcc": (0.30, 0.11),
    "smpte240m": (0.212, 0.087),
    "bt2020nc": (0.2627, 0.0593),
}
# tags whose DALI frames are corrected; others convert as DALI does (BT.601)
CORRECTED = ("bt709", "fcc", "smpte240m", "bt2020nc")


def _rgb_to_ypbpr(kr: float, kb: float) -> torch.Tensor:
    kg = 1.0 - kr - kb
    return torch.tensor(
        [
            [kr, kg, kb],
            [-kr / (2 * (1 - kb)), -kg / (2 * (1 - kb)), 0.5],
            [0.5, -kg / (2 * (1 - kr)), -kb / (2 * (1 - kr))],
        ],
        dtype=torch.float64,
    )


def correction_matrix(colorspace: str) -> torch.Tensor | None:
    """float64 [3, 3] taking RGB converted by BT.601 to RGB converted by `colorspace`; None when DALI's
    conversion already is the right one."""
    if colorspace not in CORRECTED:
        return None
    to_yuv = _rgb_to_ypbpr(*LUMA_WEIGHTS["bt601"])  # what DALI's conversion inverts
    return torch.linalg.inv(_rgb_to_ypbpr(*LUMA_WEIGHTS[colorspace])) @ to_yuv


def correct_frames(
    frames: torch.Tensor, matrix: torch.Tensor, mean, std, hw: tuple[int, int]
) -> torch.Tensor:
    """frames: normalized [..., 3, L, L] (DALI's output, channels in RGB order); mean, std: per RGB
    channel on the 0..255 scale; hw: the resized frame's (height, width) inside the zero padding.
    Returns the frames with that area converted by `matrix` and clipped to 0..255 as a uint8 decode
    would be."""
    h, w = hw
    mean_t = torch.tensor(mean, dtype=frames.dtype, device=frames.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=frames.dtype, device=frames.device).view(3, 1, 1)
    area = frames[..., :h, :w]
    rgb = area * std_t + mean_t  # [..., 3, h, w] on 0..255
    fixed = torch.einsum("ij,...jhw->...ihw", matrix.to(frames.dtype).to(frames.device), rgb).clamp_(0, 255)
    out = frames.clone()
    out[..., :h, :w] = (fixed - mean_t) / std_t
    return out
