"""Dense bf16 peak rates per accelerator, for model-FLOPs utilization (MFU).

Rates are the vendors' datasheet numbers for dense (not 2:4 sparse) bf16 tensor-core math. They are
upper bounds: a large bf16 matrix product reaches about 80% of them on an H100/H200 (../shared/docs/GPU.md,
788-798 TFLOP/s measured). MFU is reported against the datasheet number, as is customary.
"""

from __future__ import annotations

import dataclasses
import re

import torch

# Matched in order against torch.cuda.get_device_name() by whole words (split at spaces and hyphens, so
# "A100-SXM4-80GB" has the word A100); the first match wins, so the more specific names (PCIe, NVL) come
# before the plain family name. Whole words: as substrings, "L4" matched the L40 and "H200" the GH200.
_BF16_DENSE_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM5
    ("H200 NVL", 835.0),
    ("H200", 989.4),  # same chip as the H100 SXM, more memory
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A10G", 70.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("V100", 125.0),  # fp16 tensor cores: V100 has no bf16; the paper's card
)


@dataclasses.dataclass(frozen=True)
class DevicePeak:
    name: str  # device name as torch reports it ("cpu" on the host)
    bf16_flops: float | None  # dense bf16 FLOP/s, None when unknown (then no MFU is reported)
    source: str  # "table", "override" or "unknown"


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def device_peak(device: torch.device | str, override_tflops: float | None = None) -> DevicePeak:
    """Peak dense bf16 FLOP/s of `device`; `override_tflops` wins (e.g. for a CPU or an unlisted card)."""
    return peak_for_name(device_name(device), override_tflops)


def peak_for_name(name: str, override_tflops: float | None = None) -> DevicePeak:
    """Peak dense bf16 FLOP/s for a device name as torch.cuda.get_device_name reports it."""
    if override_tflops is not None:
        if override_tflops <= 0:
            raise ValueError(f"peak TFLOPS override must be positive, got {override_tflops}")
        return DevicePeak(name, override_tflops * 1e12, "override")
    key = _table_key(name)
    if key is not None:
        return DevicePeak(name, dict(_BF16_DENSE_TFLOPS)[key] * 1e12, "table")
    return DevicePeak(name, None, "unknown")


def _table_key(name: str) -> str | None:
    """The first table entry whose words appear in `name`'s words, in a row."""
    words = [w for w in re.split(r"[\s\-_]+", name.upper()) if w]
    for key, _ in _BF16_DENSE_TFLOPS:
        want = key.upper().split()
        if any(words[i : i + len(want)] == want for i in range(len(words) - len(want) + 1)):
            return key
    return None


def card_slug(name: str) -> str:
    """A short file-name tag for a device name: "NVIDIA H100 80GB HBM3" -> "h100", "cpu" -> "cpu".

    The table's family names come first (its order puts "H100 PCIe" before "H100"); an unlisted card
    keeps the letters and digits of its name's first word after the vendor.
    """
    key = _table_key(name)
    if key is not None:
        return "".join(c for c in key.lower() if c.isalnum())
    words = [w for w in name.split() if w.upper() not in ("NVIDIA", "TESLA", "GEFORCE", "AMD")]
    return "".join(c for c in (words[0] if words else "gpu").lower() if c.isalnum()) or "gpu"


def mfu(model_flops: float, seconds: float, peak: DevicePeak) -> float | None:
    """Model FLOPs per second over the peak rate, in [0, 1] for a sane measurement; None without a peak."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    if peak.bf16_flops is None:
        return None
    return model_flops / seconds / peak.bf16_flops
