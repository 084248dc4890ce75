"""Pack the cut videos of a batch into fewer streams, so that DALI sets up one decode for several samples.

Why: DALI's mixed decoder pays a fixed cost per sample whatever it decodes. On an H200 (2026-11-27,
`benchmarks/results/nvdec_diagnose_h200_2026-11-27.json`) one frame from a 2 KB cut file cost 8.8 ms a
sample, about what a whole 8-frame sample costs, and the raw-video benchmark did not divide that cost over
more processes (4 processes 782 frames/s, 8 processes 703). A sample of 4 clips x 2 frames therefore spends
most of its time on set-up; a pack of k samples pays it once.

How: every cut (trim.py) is a sequence of packet runs that each start on a key frame (H.264 IDR, HEVC IRAP),
so cuts of one stream format decode back to back like the runs inside one cut. Cuts are grouped by their
stream format (container, codec, coded size, pixel format, time base and the codec's extradata: its
SPS/PPS for H.264), up to `max_rows` a pack, and muxed one after the other with timestamps shifted to keep
increasing. The k-th cut's frame i is then frame i + (frames of the cuts before it) of the pack. Cuts that
differ in format, or that do not remux, stay single. A cut that starts on an HEVC CRA picture opens a new
pack: like a cut's later runs, a later cut must start on an IDR or BLA picture (trim.py says why).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io

import numpy as np

from .trim import MUXERS, frame_step, is_clean_start, mux_runs, nal_length_size


@dataclasses.dataclass
class Pack:
    """One DALI sample: encoded bytes holding the cuts of `rows` (batch rows) back to back, and the frames
    of each row in it: indices int32 [len(rows), ...] (each row's frame indices, shifted into the pack)."""

    data: np.ndarray
    rows: list[int]
    indices: np.ndarray


def pack_cuts(cuts: list[np.ndarray], indices: list[np.ndarray], max_rows: int) -> list[Pack]:
    """Group the batch's cut videos (`cuts[i]`, with its frames `indices[i]` in the cut) into packs of at most
    `max_rows` rows of one stream format. Every row lands in exactly one pack, in row order within a pack;
    packs are ordered by their first row. max_rows 1: one pack per row, nothing remuxed."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    singles = [Pack(cuts[i], [i], np.asarray(indices[i], dtype=np.int32)[None]) for i in range(len(cuts))]
    if max_rows == 1 or len(cuts) < 2:
        return singles
    import av

    packs: list[Pack] = []
    with contextlib.ExitStack() as stack:
        groups: dict[tuple, list[tuple[int, object, list]]] = {}
        heads: set[int] = set()  # rows whose cut can only open a pack
        for i, cut in enumerate(cuts):
            try:
                src = stack.enter_context(av.open(io.BytesIO(cut.tobytes())))
                stream = src.streams.video[0]
                packets = [p for p in src.demux(stream) if p.size > 0 and p.pts is not None]
            except (av.FFmpegError, IndexError):
                packs.append(singles[i])  # the loader finds out about it when it decodes the row alone
                continue
            groups.setdefault(_format_key(src, stream), []).append((i, stream, packets))
            if packets and not _starts_clean(stream, packets[0]):
                heads.add(i)
        for key, members in groups.items():
            muxer = MUXERS.get(key[0].split(",")[0], "matroska")
            for chunk in _chunks(members, max_rows, heads):
                packs += _pack_group(chunk, muxer, indices, singles)
    return sorted(packs, key=lambda pack: pack.rows[0])


def _starts_clean(stream, first_packet) -> bool:
    """Whether a cut's first packet may follow another cut's pictures (not an HEVC CRA picture)."""
    ctx = stream.codec_context
    codec = ctx.codec.canonical_name
    return is_clean_start(bytes(first_packet), codec, nal_length_size(codec, ctx.extradata))


def _chunks(members: list[tuple[int, object, list]], max_rows: int, heads: set[int]) -> list[list]:
    """The members in order, at most `max_rows` a chunk; a member whose row is in `heads` opens a chunk."""
    chunks: list[list] = []
    for member in members:
        if not chunks or len(chunks[-1]) == max_rows or member[0] in heads:
            chunks.append([])
        chunks[-1].append(member)
    return chunks


def _format_key(container, stream) -> tuple:
    ctx = stream.codec_context
    return (
        container.format.name,
        ctx.name,
        ctx.width,
        ctx.height,
        ctx.pix_fmt,
        stream.time_base,
        bytes(ctx.extradata or b""),
    )


def _pack_group(
    members: list[tuple[int, object, list]], muxer: str, indices, singles: list[Pack]
) -> list[Pack]:
    """One pack of the members' cuts (each: row, stream, packets in decode order), or singles if it fails."""
    import av

    if len(members) == 1:
        return [singles[members[0][0]]]
    rows = [row for row, _, _ in members]
    step = max(frame_step(packets) for _, _, packets in members)
    try:
        data, _ = mux_runs(members[0][1], [packets for _, _, packets in members], muxer, step)
    except (av.FFmpegError, ValueError):
        return [singles[row] for row in rows]
    # Each cut's packets come after the previous cut's in presentation order too, so frame i of a cut is
    # frame i + (packets of the cuts before it) of the pack.
    offsets = np.cumsum([0] + [len(packets) for _, _, packets in members[:-1]])
    shifted = [
        np.asarray(indices[row], dtype=np.int32) + offset for row, offset in zip(rows, offsets, strict=True)
    ]
    return [Pack(data, rows, np.stack(shifted).astype(np.int32))]
