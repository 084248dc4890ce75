"""dali_pipelines/color.py: DALI's BT.601 frames mapped to the tagged matrix's colours, against float64
references written out from each standard's Kr, Kb (not from color.py's matrices)."""

import pytest
import torch

from clipbert.data.decoders.pyav import COLORSPACES
from dali_pipelines.color import CORRECTED, LUMA_WEIGHTS, correct_frames, correction_matrix

# Kr, Kb as the standards give them: ITU-R BT.601, BT.709, BT.2020 (non-constant luminance), SMPTE 240M and
# the FCC's (47 CFR 73.682), which FFmpeg's swscale converts by when PyAV turns a tagged frame into RGB.
STANDARD = {
    "bt601": (0.299, 0.114),
    "bt709": (0.2126, 0.0722),
    "bt2020nc": (0.2627, 0.0593),
    "smpte240m": (0.212, 0.087),
    "fcc": (0.30, 0.11),
}


def ypbpr_to_rgb(ypbpr: torch.Tensor, kr: float, kb: float) -> torch.Tensor:
    """float64 [..., 3] Y'PbPr (Y' 0..1, Pb, Pr -0.5..0.5) -> R'G'B' 0..1, by the standard's equations."""
    y, pb, pr = ypbpr.unbind(-1)
    r = y + 2 * (1 - kr) * pr
    b = y + 2 * (1 - kb) * pb
    g = (y - kr * r - kb * b) / (1 - kr - kb)
    return torch.stack([r, g, b], -1)


def random_ypbpr(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=gen, dtype=torch.float64) - torch.tensor([0.0, 0.5, 0.5])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("colorspace", ["bt709", "bt2020nc", "smpte240m", "fcc"])
def test_correction_maps_bt601_rgb_to_the_tagged_matrix_rgb(colorspace, seed):
    ypbpr = random_ypbpr(1001, seed)
    dali = ypbpr_to_rgb(ypbpr, *STANDARD["bt601"])  # what DALI gives, whatever the tag
    want = ypbpr_to_rgb(ypbpr, *STANDARD[colorspace])  # what PyAV gives for the tag
    got = dali @ correction_matrix(colorspace).T
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert (got - dali).abs().max() > 0.004  # each tag differs from BT.601 by a grey level (FCC) or more


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-9), (torch.float32, 2e-3)])  # on 0..255
@pytest.mark.parametrize("colorspace", ["bt709", "bt2020nc", "smpte240m", "fcc"])
def test_correct_frames_converts_the_resized_area_and_clips(colorspace, dtype, atol):
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    n, size, (h, w) = 5, 9, (7, 6)  # odd sizes; the resized area leaves padding right and below
    ypbpr = random_ypbpr(n * h * w, seed=3).view(n, h, w, 3)
    dali = ypbpr_to_rgb(ypbpr, *STANDARD["bt601"]) * 255  # [n, h, w, 3], may leave 0..255 before clipping
    frames = torch.zeros(n, 3, size, size, dtype=torch.float64)
    mean_t = torch.tensor(mean, dtype=torch.float64).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float64).view(3, 1, 1)
    frames[..., :h, :w] = (dali.clamp(0, 255).permute(0, 3, 1, 2) - mean_t) / std_t  # DALI clips to uint8
    frames = frames.to(dtype).transpose(-1, -2).contiguous().transpose(-1, -2)  # non-contiguous, as a view
    out = correct_frames(frames, correction_matrix(colorspace).to(dtype), mean, std, (h, w))
    assert out.dtype == dtype and out.shape == frames.shape
    want = ypbpr_to_rgb(ypbpr, *STANDARD[colorspace]) * 255
    # DALI's clipped frames map back exactly where no channel was clipped
    inside = ((dali >= 0) & (dali <= 255)).all(-1)  # [n, h, w]
    got = (out[..., :h, :w].double() * std_t + mean_t).permute(0, 2, 3, 1)
    torch.testing.assert_close(got[inside], want.clamp(0, 255)[inside], rtol=0, atol=atol)
    assert ((got >= -atol) & (got <= 255 + atol)).all()  # clipped as a uint8 decode would be
    assert (out[..., h:, :] == frames[..., h:, :]).all() and (out[..., :, w:] == frames[..., :, w:]).all()
    assert correct_frames(frames[:0], correction_matrix(colorspace), mean, std, (h, w)).shape[0] == 0


def test_weights_are_the_standards_and_match_the_probes_names():
    for name, (kr, kb) in STANDARD.items():
        assert LUMA_WEIGHTS[name] == pytest.approx((kr, kb), abs=0)
    # the probe names FFmpeg's tags 1, 4, 7, 9 so; 5, 6 (BT.470BG, SMPTE 170M) are BT.601 as DALI converts
    assert set(CORRECTED) == {COLORSPACES[code] for code in (1, 4, 7, 9)}
    for name in (COLORSPACES[5], COLORSPACES[6], "bt2020c", "", "unknown"):
        assert correction_matrix(name) is None
