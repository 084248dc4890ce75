"""Decoding backends behind one interface: `decode(key, indices [N, T]) -> uint8 [N, T, H, W, 3]`."""

from .base import Decoder, VideoDecodeError, VideoInfo

__all__ = ["Decoder", "VideoDecodeError", "VideoInfo", "build_decoder"]


def build_decoder(backend: str, frame_store: str = "", pyav_threads: int = 1) -> Decoder:
    """`pyav` decodes video files; `frame_store` reads an HDF5 store of JPEG frames (keys = video ids).

    The DALI backend decodes whole batches on its own (see dali_pipelines/); datasets use PyAV to probe
    videos for it and as its per-sample fallback.
    """
    if backend in ("pyav", "dali"):
        from .pyav import PyAVDecoder

        return PyAVDecoder(threads=pyav_threads)
    if backend == "frame_store":
        from .frame_store import FrameStoreDecoder

        return FrameStoreDecoder(frame_store)
    raise ValueError(f"backend must be one of pyav, dali, frame_store; got {backend!r}")
