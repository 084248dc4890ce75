"""Which videos DALI must not decode, and why: each goes to PyAV instead, and the loader reports it.

Two kinds, both decided from the probe (codec, display height, width and rotation) before DALI sees the file:
- what DALI cannot read at all: any codec outside the decoder's list (H.264 on the CPU decoder; GIF, MPEG-2
  anywhere), videos below NVDEC's minimum size, and videos with a display rotation (phone recordings), whose
  frames DALI 2.4 decodes as stored, sideways (measured with its CPU decoder on a 90-degree MP4);
- what NVDEC would decode with the wrong colours because of DALI's decoder cache (`NvdecCacheGuard`).
"""

from __future__ import annotations

# What each DALI video decoder reads, as FFmpeg names codecs. Lists of what works, not of what fails: a codec
# outside them (GIF, MPEG-2, ProRes ...) goes to PyAV up front. A denylist let such a file reach DALI, fail
# its whole batch and be found by the row-by-row retry: right frames, at the cost of a rebuilt pipeline.
CPU_READABLE = ("vp8", "vp9", "mjpeg")  # DALI's CPU decoder (libavcodec inside DALI, no H.264)
# NVDEC's smallest frame, (height, width), per codec (the Video Codec SDK's support matrix; DALI asserts the
# same from cuvidGetDecoderCaps: "Video is too small ... 64x48 vs supported:128x128" for VP9 on an H100).
# Such videos go to PyAV up front instead of failing a pipeline run that must then be rebuilt.
NVDEC_MIN_HW = {
    "h264": (16, 48),
    "mpeg4": (16, 48),
    "vp8": (16, 48),
    "hevc": (144, 144),
    "vp9": (128, 128),
    "av1": (128, 128),
}
# DALI's GPU decoder: the codecs above, and MJPEG, which went to it before these lists existed (unverified
# on NVDEC; a failure there costs the batch's retry, row by row, and the file goes to PyAV).
GPU_READABLE = (*NVDEC_MIN_HW, "mjpeg")
# The block size a codec's frames are coded in: the decoder works on the frame rounded up to it, and the
# stream's crop window says which part is picture (H.264 codes 1080 rows as 1088 and 36 as 48).
CODED_ALIGN = {"h264": 16, "mpeg4": 16, "vp8": 16, "hevc": 8, "vp9": 8, "av1": 8}


def dali_unreadable(dali_device: str, codec: str, height: int, width: int, rotation: int = 0) -> str | None:
    """Why DALI on `dali_device` ("cpu" or "gpu") cannot decode such a video, or None when it can.

    `rotation`: VideoInfo.rotation, degrees counterclockwise; PyAV turns such frames upright, DALI does not.
    """
    if rotation:
        return f"display rotation of {rotation} degrees, which DALI ignores (its frames would be sideways)"
    if dali_device == "cpu":
        return None if codec in CPU_READABLE else f"codec {codec or 'unknown'} unreadable by DALI on CPU"
    if codec not in GPU_READABLE:
        return f"codec {codec or 'unknown'} unreadable by DALI's NVDEC decoder"
    min_h, min_w = NVDEC_MIN_HW.get(codec, (0, 0))
    if height < min_h or width < min_w:
        return f"{width}x{height} {codec} is below NVDEC's {min_w}x{min_h} minimum"
    return None


def coded_hw(codec: str, height: int, width: int) -> tuple[int, int]:
    """The (height, width) NVDEC decodes for a video displayed at (height, width): whole coding blocks."""
    align = CODED_ALIGN.get(codec, 16)
    return -(-height // align) * align, -(-width // align) * align


class NvdecCacheGuard:
    """Predicts which videos DALI 2.4's NVDEC decoder cache would decode with the wrong colours.

    DALI keeps one process-wide cache of NVDEC decoders per GPU and hands a free decoder to any video of the
    same codec whose coded size matches the decoder's size, ignoring the crop window. A decoder created for
    an uncropped video (64x48 coded and shown as 64x48) is therefore reused for a cropped one of the same
    coded size (64x36, coded 64x48). NVDEC then writes its output surfaces at the first video's 48 rows,
    while DALI's NV12-to-RGB kernel looks for the chroma plane after the second video's 36: the luma is
    right and the colours are not (measured on an H100: 20-23 grey levels off, against 1-2 for the same
    video on a fresh decoder; benchmarks/results/nvdec_diagnose_h100_2026-11-27.json). A decoder created for
    a cropped video records its display size, which no coded size equals, so the reverse never happens.

    The guard remembers the uncropped (codec, coded size) pairs DALI decoded in this process and sends a
    cropped video with the same pair to PyAV. One guard per process and GPU, like DALI's cache.
    """

    def __init__(self):
        self.uncropped: set[tuple[str, int, int]] = set()  # (codec, coded height, coded width)

    def check(self, videos: list[tuple[str, int, int]]) -> list[str | None]:
        """videos: (codec, display height, display width) of the samples DALI is about to decode together.

        Returns, per video, why it must go to PyAV, or None. The batch's own uncropped videos count too:
        DALI decodes the batch's samples concurrently, so their order inside it is unknown.
        """
        for codec, height, width in videos:
            if coded_hw(codec, height, width) == (height, width):
                self.uncropped.add((codec, height, width))
        reasons = []
        for codec, height, width in videos:
            coded_h, coded_w = coded_hw(codec, height, width)
            collides = (coded_h, coded_w) != (height, width) and (codec, coded_h, coded_w) in self.uncropped
            reasons.append(
                f"{width}x{height} {codec} is coded as {coded_w}x{coded_h} like an uncropped video decoded "
                "before it: DALI's NVDEC decoder cache would reuse that video's decoder and read the wrong "
                "chroma rows"
                if collides
                else None
            )
        return reasons


_GUARDS: dict[int, NvdecCacheGuard] = {}


def nvdec_cache_guard(device_id: int) -> NvdecCacheGuard:
    """The process's guard for one GPU (DALI's cache is per process and per GPU)."""
    return _GUARDS.setdefault(device_id, NvdecCacheGuard())
