"""Cut a video down to the packets a sample's frames need, so that DALI decodes only those.

Why: DALI 2.4's `fn.decoders.video` decodes every sample from the start of its file, so a frame's cost grows
with its index, with `build_index` on or off alike (the per-sample decoder behaves as if it had no key-frame
index; the exact cause in DALI's source is not established). DALI's CPU decoder on a 300-frame, GOP-30,
320x240 VP9 video, one frame per sample: frame 0 2.0 ms, frame 30 (a key frame) 10.9 ms, frame 120 40.9 ms,
frame 299 94.9 ms. NVDEC on an H200, H.264: frame 0 9.9 ms, frame 299 29.9 ms; from the cut file 8.8 and
10.1 ms.

The cut copies packets, decodes nothing: for each wanted frame, the run of packets in decode order from the
key frame before it up to the frame itself (every reference precedes its user in decode order, B-frames
included); overlapping runs merge. H.264 pictures that nothing references (nal_ref_idc 0) are left out of a
run unless wanted. The runs are muxed back to back into an in-memory container with timestamps shifted so
that they stay increasing, and each wanted frame gets its index in the new stream. Frame indices here are
presentation ranks (the packets sorted by pts), the same as DALI's own index. The whole file is demuxed, as
DALI did with the whole file: about 7 us a packet on the 2-core dev machine (12 ms for a 1-minute, 30 fps
video; ActivityNet's 2-minute average about 25 ms a sample in a worker).

Key frames are the ones DALI seeks to: for H.264 an IDR picture and for HEVC an IRAP picture, read from the
packet's NAL units (the container's key flag also marks recovery-point I-frames, and a cut that starts on one
has no key frame for DALI's index). Open GOPs: pictures shown before their key frame but decoded after it
(HEVC RASL) reference the previous GOP, so a wanted one starts its run a key frame earlier, and a run drops
the leading pictures of the key frame it starts on, which decoders skip at a stream's start.

Only the first run may start on an HEVC CRA picture (open GOP). A CRA after other pictures is decoded as the
continuation of the stream, not as a new start: its picture order count follows on from the previous run's
and the decoded pictures waiting for output are not flushed, so with runs far apart in the file the frames
come out of the decoder in the wrong order (FFmpeg's HEVC decoder on an x265 open-GOP video, runs at frames
0-3 and 192-200: frame 192 came out before frames 3 and 4). Later runs start on an IDR or BLA picture, which
restarts the count, or continue the run before them: with x265's defaults (CRA key frames, one IDR at the
start) a cut holds every packet from its first run's key frame to its last wanted frame. pack.py keeps a cut
that starts on a CRA at the head of its pack for the same reason.
"""

from __future__ import annotations

import io

import numpy as np

from clipbert.data.decoders import VideoDecodeError

# Wanted frames past the last packet by at most this many stand in for the last frame, as in PyAV's decoder.
EDGE_TOLERANCE_FRAMES = 2

# Output muxer per input format: keep the family, so that codec and extradata carry over as they are.
MUXERS = {"mov": "mp4", "mp4": "mp4", "matroska": "matroska", "webm": "matroska"}


def trim_video(path: str, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Encoded bytes of the runs of packets that decode `indices` (int [...]), and the indices of the same
    frames in those bytes (same shape). Raises VideoDecodeError naming the file if it cannot be demuxed."""
    import av

    from clipbert.data.decoders.pyav import open_video

    try:
        with open_video(path) as src:  # missing, empty, unreadable or without video: VideoDecodeError
            stream = src.streams.video[0]
            packets = [p for p in src.demux(stream) if p.size > 0 and p.pts is not None]
            if not packets:
                raise VideoDecodeError(path, "no video packets")
            codec = stream.codec_context.codec.canonical_name
            length_size = nal_length_size(codec, stream.codec_context.extradata)
            keys = [p.is_keyframe and is_random_access(bytes(p), codec, length_size) for p in packets]
            runs, wanted_at = plan_runs(
                [p.pts for p in packets],
                keys,
                shown_to_packet_ranks(packets, np.asarray(indices), path),
                path,
                disposable=lambda pos: is_disposable(bytes(packets[pos]), codec, length_size),
                clean=[key and is_clean_start(bytes(p), codec, length_size) for key, p in zip(keys, packets)],
            )
            muxer = MUXERS.get(src.format.name.split(",")[0], "matroska")
            try:
                data, new_pts = mux_runs(
                    stream, [[packets[pos] for pos in run] for run in runs], muxer, frame_step(packets)
                )
            except (av.FFmpegError, ValueError):
                # The file demuxed, so it is not bad; its packets just do not remux (e.g. Annex B H.264 in
                # AVI into Matroska). DALI gets the whole file, as without cutting.
                return np.fromfile(path, dtype=np.uint8), np.asarray(indices, dtype=np.int32)
    except av.FFmpegError as err:
        raise VideoDecodeError(path, f"cannot demux ({err})") from err
    kept_order = np.argsort(new_pts, kind="stable")  # new presentation rank -> kept packet
    new_rank = np.empty_like(kept_order)
    new_rank[kept_order] = np.arange(len(kept_order))
    return data, new_rank[wanted_at].reshape(np.shape(indices)).astype(np.int32)


def shown_to_packet_ranks(packets: list, indices: np.ndarray, path: str = "<video>") -> np.ndarray:
    """Frame indices (ranks among the shown frames, as PyAV and DALI count them) -> ranks among all packets.

    They differ where an edit list starts the video after some packets: FFmpeg flags those `is_discard`,
    and they decode (other frames may reference them) but are never shown. They stay in the cut as
    references; in the cut file, which has no edit list, they are frames, and `new_rank` counts them.
    They differ too where a timestamp is repeated (a muxer bug): PyAV's probe counts it once and shows the
    first packet decoded at it, while DALI counts every packet, so from the repeat on its frame k was PyAV's
    frame k - 1 (a VP9 webm with one repeated timestamp: 14 grey levels off). The repeats stay in the cut
    as references, as discarded packets do.
    """
    discard = np.array([getattr(p, "is_discard", False) for p in packets], dtype=bool)
    hidden = hidden_ranks(np.array([p.pts for p in packets], dtype=np.int64), discard)
    if not hidden.any():
        return indices
    shown = np.flatnonzero(~hidden)  # packet rank of each shown frame
    flat = np.asarray(indices, dtype=np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= len(shown) + EDGE_TOLERANCE_FRAMES):
        raise VideoDecodeError(
            path, f"frame indices {flat.min()}..{flat.max()} outside the {len(shown)} frames"
        )
    return shown[np.minimum(flat, len(shown) - 1)]


def hidden_ranks(pts: np.ndarray, discard: np.ndarray) -> np.ndarray:
    """bool [packets], by presentation rank (pts sorted stably, so ties keep decode order): the packets that
    are no frame of PyAV's, discard-flagged ones and every shown packet after the first at its timestamp."""
    rank_to_pos = np.argsort(pts, kind="stable")
    hidden = discard[rank_to_pos]
    shown = np.flatnonzero(~hidden)
    hidden[shown[1:][np.diff(pts[rank_to_pos][shown]) == 0]] = True
    return hidden


def whole_file_indices(path: str, indices: np.ndarray) -> np.ndarray:
    """The frames `indices` (PyAV's) in DALI's count of the whole file, for `dali_trim` off: DALI skips an
    edit list's discarded packets itself but counts every packet of a repeated timestamp
    (shown_to_packet_ranks). The indices as they are when nothing is repeated or the file does not demux
    (DALI then fails on it and the loader hands it to PyAV)."""
    import av

    from clipbert.data.decoders.pyav import open_video

    try:
        with open_video(path) as src:
            stream = src.streams.video[0]
            pts = [
                p.pts
                for p in src.demux(stream)
                if p.size > 0 and p.pts is not None and not getattr(p, "is_discard", False)
            ]
    except (av.FFmpegError, VideoDecodeError):
        return indices
    hidden = hidden_ranks(np.asarray(pts, dtype=np.int64), np.zeros(len(pts), dtype=bool))
    if not hidden.any():
        return indices
    shown = np.flatnonzero(~hidden)
    return shown[np.clip(np.asarray(indices, dtype=np.int64), 0, len(shown) - 1)].astype(np.int32)


def plan_runs(
    pts: list[int],
    keyframe: list[bool],
    indices: np.ndarray,
    path: str = "<video>",
    disposable=lambda pos: False,
    clean: list[bool] | None = None,
):
    """Which packets to keep: (runs, wanted_at).

    pts, keyframe: per packet in decode order. indices: wanted presentation ranks. disposable(pos): whether
    the packet at a decode position is referenced by no other, so that it is left out unless wanted.
    clean: per packet, whether a key frame may also start a run after another (HEVC: an IDR or BLA picture,
    not a CRA); None: every key frame may.
    runs: per run, the kept decode positions, ascending; runs ascend and do not overlap. wanted_at: for each
    entry of `indices` (flattened), the position of its packet in the concatenation of the runs.
    """
    n = len(pts)
    pts = np.asarray(pts, dtype=np.int64)
    flat = np.asarray(indices, dtype=np.int64).ravel()
    if flat.size and (flat.min() < 0 or flat.max() >= n + EDGE_TOLERANCE_FRAMES):
        raise VideoDecodeError(path, f"frame indices {flat.min()}..{flat.max()} outside the {n} frames")
    flat = np.minimum(flat, n - 1)
    decode_pos = np.argsort(pts, kind="stable")  # presentation rank -> decode position
    keys = [pos for pos in range(n) if keyframe[pos]]
    clean_keys = keys if clean is None else [pos for pos in keys if clean[pos]]
    wanted_pos = decode_pos[flat]
    wanted_set = set(wanted_pos.tolist())
    # The first run may start on any key frame; a later one needs a clean key frame, or else it continues
    # the first (decoding on from the first run's start reaches every later frame).
    first = min((_run_start(pos, pts, keys) for pos in wanted_set), default=0)
    spans = _merge_spans([(max(_run_start(pos, pts, clean_keys), first), pos) for pos in wanted_set])
    # Pictures shown before the run's first key frame are its leading pictures: without the previous GOP they
    # do not decode, so they are left out unless wanted (a wanted one started its run a GOP earlier); so are
    # pictures nothing references, unless wanted: fewer to decode, and with B-frames fewer decoded out of
    # display order.
    runs = [
        [
            pos
            for pos in range(first, last + 1)
            if pos in wanted_set or (pts[pos] >= pts[first] and not disposable(pos))
        ]
        for first, last in spans
    ]
    at = {pos: i for i, pos in enumerate(pos for run in runs for pos in run)}
    return runs, np.array([at[int(p)] for p in wanted_pos], dtype=np.int64)


def _run_start(pos: int, pts: np.ndarray, keys: list[int]) -> int:
    """The decode position a run must start at to decode the packet at `pos`: the last key frame decoded
    before it and shown no later than it (so an open GOP's leading picture starts a key frame earlier); a
    stream that does not start on a key frame decodes from its first packet, as DALI does."""
    return max((k for k in keys if k <= pos and pts[k] <= pts[pos]), default=0)


def _merge_spans(intervals: list[tuple[int, int]]) -> list[list[int]]:
    """(start, position) decode intervals -> [first, last] spans, ascending, merged where they overlap or
    touch. Sorted by start, not by position: a leading picture decoded after its key frame starts earlier
    than the key frame, and a run must begin at the earliest start any of its pictures needs."""
    spans: list[list[int]] = []
    for start, pos in sorted(intervals):
        if spans and start <= spans[-1][1] + 1:
            spans[-1][1] = max(spans[-1][1], pos)
        else:
            spans.append([start, pos])
    return spans


def nal_length_size(codec: str, extradata: bytes | None) -> int:
    """Bytes of each NAL unit's length prefix in a packet (mp4 and Matroska keep it in the avcC/hvcC record),
    or 0 for Annex B start codes (no record, or one that starts with a start code)."""
    if not extradata or extradata[0] != 1:
        return 0
    if codec == "h264" and len(extradata) > 4:
        return (extradata[4] & 3) + 1
    if codec == "hevc" and len(extradata) > 21:
        return (extradata[21] & 3) + 1
    return 0


def is_random_access(data: bytes, codec: str, length_size: int = 4) -> bool:
    """Whether a packet the container flags as a key frame is one a decoder can start on: for H.264 an IDR
    picture (NAL type 5), for HEVC an IRAP picture (types 16-21); other codecs: the flag is enough."""
    if codec == "h264":
        return any(header & 0x1F == 5 for header in _nal_headers(data, length_size))
    if codec == "hevc":
        return any(16 <= (header >> 1) & 0x3F <= 21 for header in _nal_headers(data, length_size))
    return True


def is_clean_start(data: bytes, codec: str, length_size: int = 4) -> bool:
    """Whether a random-access packet may also start a run that follows other pictures: for HEVC an IDR or
    BLA picture (NAL types 16-20), not a CRA (21), which decoders take for a fresh start only at the stream's
    beginning (module docstring); other codecs' key frames (H.264 IDR, VP9, MJPEG) always may."""
    if codec == "hevc":
        return any(16 <= (header >> 1) & 0x3F <= 20 for header in _nal_headers(data, length_size))
    return is_random_access(data, codec, length_size)


def is_disposable(data: bytes, codec: str, length_size: int = 4) -> bool:
    """Whether no other picture references this one, so a cut may leave it out unless it is wanted: H.264
    slices (NAL types 1-5) whose nal_ref_idc is 0. Other codecs: never (HEVC's and VP9's rules are not
    per packet)."""
    if codec != "h264":
        return False
    slices = [h for h in _nal_headers(data, length_size) if 1 <= h & 0x1F <= 5]
    return bool(slices) and all(h >> 5 & 3 == 0 for h in slices)


def _nal_headers(data: bytes, length_size: int):
    """First byte of each NAL unit: length-prefixed (`length_size` bytes) or, for 0, Annex B start codes."""
    if length_size == 0:
        at = data.find(b"\0\0\1")
        while at >= 0 and at + 3 < len(data):
            yield data[at + 3]
            at = data.find(b"\0\0\1", at + 3)
        return
    at = 0
    while at + length_size < len(data):
        size = int.from_bytes(data[at : at + length_size], "big")
        yield data[at + length_size]
        at += length_size + size


def mux_runs(stream, runs: list[list], muxer: str, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Mux runs of packets (each in decode order, each starting on a key frame) back to back in the format
    of `stream`; returns (bytes, the new pts of every packet, in order). Each run is shifted so that its
    earliest timestamp follows the previous run's latest by `step`: timestamps keep increasing, and a run's
    pts - dts gaps (B-frames) survive."""
    import av

    buf = io.BytesIO()
    new_pts = []
    with av.open(buf, "w", format=muxer) as out:
        ostream = out.add_stream_from_template(stream)
        next_ts = 0
        for run in runs:
            low = min(min(p.pts, p.dts if p.dts is not None else p.pts) for p in run)
            shift = next_ts - low
            for p in run:
                dts = p.dts if p.dts is not None else p.pts
                p.pts, p.dts = p.pts + shift, dts + shift
                new_pts.append(p.pts)
                p.stream = ostream
                out.mux(p)
            next_ts = max(max(p.pts, p.dts) for p in run) + step
    return np.frombuffer(buf.getvalue(), dtype=np.uint8), np.asarray(new_pts)


def frame_step(packets) -> int:
    """The most common pts step between presentation-adjacent packets (>= 1)."""
    pts = np.sort(np.fromiter((p.pts for p in packets), dtype=np.int64))
    diffs = np.diff(pts)
    diffs = diffs[diffs > 0]
    if diffs.size == 0:
        return 1
    values, counts = np.unique(diffs, return_counts=True)
    return int(values[counts.argmax()])
