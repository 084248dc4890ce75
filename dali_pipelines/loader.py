"""DALI-backed loader: the torch DataLoader's workers sample indices and tokenize; DALI decodes the frames.

A file DALI cannot decode (bad file, or H.264 on the CPU decoder) kills the pipeline run, so the pipelines
are rebuilt, the offending sample is found by decoding the batch's samples one by one, and from then on that
file is decoded with PyAV. Files DALI cannot read, or would decode wrongly, go to PyAV up front (routing.py).
A file PyAV cannot decode either is dropped from the batch; all are reported in `bad_videos` so that the
trainer's BadInputTracker counts them: those PyAV decoded as fallbacks, those it dropped as bad files (the
entries' ends are clipbert.data.bad_input's).
"""

from __future__ import annotations

import torch

from clipbert.data.bad_input import DROPPED, TRYING_PYAV, USED_PYAV
from clipbert.data.decoders import VideoDecodeError
from clipbert.data.decoders.pyav import PyAVDecoder
from clipbert.data.preprocess import preprocess_frames, resized_hw

from .color import correct_frames, correction_matrix
from .common import read_bytes
from .frame_store import DaliJpegDecoder
from .pack import Pack
from .routing import dali_unreadable, nvdec_cache_guard
from .video import DaliVideoDecoder


class _OverlappedLoader:
    """Iterates the torch DataLoader and keeps one batch decoding in DALI while the caller trains on the
    previous one: finish(k), submit(k + 1), yield k.

    A caller that stops early (`break`, an exception, a closed iterator) leaves batch k + 1 scheduled in
    DALI, whose pipelines hand out outputs first in, first out: the next iteration's first collect would
    return that batch's frames, and every batch after it would be one behind. So the iteration drops its
    pending job when it ends, and a new one first drops what an earlier iteration, paused and not closed
    yet, left pending.
    """

    loader = None
    _pending: dict | None = None  # submitted to DALI and not handed to finish() yet

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        # made now, not at the first next(): a caller's fork_rng must cover the DataLoader's seed draw
        # (clipbert/data/loader.py, NormalizingLoader.__iter__)
        return self._overlapped(iter(self.loader))

    def _overlapped(self, batches):
        self._drop_pending()
        mine = None
        try:
            for batch in batches:
                done = self._finish_pending()
                mine = self._pending = self.submit(batch)
                if done is not None:
                    yield done
            done = self._finish_pending()
            if done is not None:
                yield done
        finally:
            if self._pending is mine:  # not a job of a newer iteration, when this one is closed late
                self._drop_pending()

    def _finish_pending(self) -> dict | None:
        job, self._pending = self._pending, None
        return self.finish(job) if job is not None else None

    def _drop_pending(self) -> None:
        job, self._pending = self._pending, None
        if job is not None:
            self.drop(job)

    def submit(self, batch: dict) -> dict:
        raise NotImplementedError

    def finish(self, job: dict) -> dict:
        raise NotImplementedError

    def drop(self, job: dict) -> None:
        """Wait for a submitted job's DALI outputs and throw them away."""
        if job["dali"] is None:
            return
        try:
            self.decoder.drain(job["dali"])
        except RuntimeError:
            self.decoder.rebuild()  # a failed run leaves the pipelines unusable, as in finish()


class DaliLoader(_OverlappedLoader):
    def __init__(self, loader, dataset, cfg, device: str = "cuda"):
        self.loader, self.sampler, self.cfg = loader, loader.sampler, cfg
        self.norm = dataset.norm
        torch_device = torch.device(device)
        self.dali_device = "gpu" if torch_device.type == "cuda" else "cpu"
        self.device = torch_device
        self.decoder = DaliVideoDecoder(
            cfg.image_size,
            self.norm,
            loader.batch_size,
            self.dali_device,
            cfg.dali_pipelines,
            cfg.dali_threads,
            cfg.dali_order,
            torch_device.index or 0,
            cfg.dali_build_index,
            cfg.dali_affine,
        )
        self.pyav = PyAVDecoder(threads=cfg.pyav_threads)
        self.use_pyav: set[str] = set()  # files DALI cannot read, failed on, or would decode wrongly
        # NVDEC's decoder cache mixes up cropped and uncropped videos of one coded size (routing.py).
        self.guard = nvdec_cache_guard(torch_device.index or 0) if self.dali_device == "gpu" else None

    def submit(self, batch: dict) -> dict:
        paths, indices = batch.pop("video_paths"), batch.pop("frame_indices").numpy()
        hw, codecs = batch.pop("video_hw"), batch.pop("video_codecs")
        spaces = batch.pop("video_colorspaces", None) or [""] * len(paths)
        rotations = batch.pop("video_rotations", None) or [0] * len(paths)
        # With DataConfig.dali_trim the workers sent each video's needed packets and their own indices;
        # `indices` stay the file's, for PyAV. Without it they sent DALI's indices in the whole file, which
        # differ from PyAV's where a timestamp repeats (trim.whole_file_indices).
        trimmed = batch.pop("video_bytes", None)
        dali_indices = batch.pop("dali_indices").numpy() if "dali_indices" in batch else indices
        packs = batch.pop("video_packs", None)  # DataConfig.dali_pack: several rows' cuts per DALI sample
        self._routed: list[str] = []  # files this batch sends to PyAV first (and reports)
        for i, codec in enumerate(codecs):
            self._route(paths[i], dali_unreadable(self.dali_device, codec, *hw[i], rotations[i]), batch)
        if self.guard is not None:
            rows = [i for i in range(len(paths)) if paths[i] not in self.use_pyav]
            reasons = self.guard.check([(codecs[i], *hw[i]) for i in rows])
            for i, reason in zip(rows, reasons, strict=True):
                self._route(paths[i], reason, batch)
        job = {"batch": batch, "paths": paths, "indices": indices, "hw": hw, "dali": None, "spaces": spaces}
        job |= {"trimmed": trimmed, "dali_indices": dali_indices, "routed": self._routed}
        rows = [i for i in range(len(paths)) if paths[i] not in self.use_pyav]
        job["packs"] = self._packs(rows, packs, job)
        job["rows"] = [i for pack in job["packs"] for i in pack.rows]  # the order DALI returns them in
        if job["rows"]:
            try:
                job["dali"] = self.decoder.submit_packs(
                    job["packs"], [hw[pack.rows[0]] for pack in job["packs"]]
                )
            except RuntimeError:
                self.decoder.rebuild()  # finish() isolates the offender
        return job

    def _packs(self, rows: list[int], packs: list[Pack] | None, job: dict) -> list[Pack]:
        """What DALI decodes for `rows`: the workers' packs whose rows all go to DALI, and a pack of one
        for every other row (a pack holding a row that goes to PyAV is split up)."""
        if packs is None:
            return [self._single(i, job) for i in rows]
        wanted = set(rows)
        out = []
        for pack in packs:
            if len(pack.rows) > 1 and wanted.issuperset(pack.rows):
                out.append(pack)
            else:
                out += [self._single(i, job) for i in pack.rows if i in wanted]
        return out

    def _route(self, path: str, reason: str | None, batch: dict) -> None:
        """From now on decode `path` with PyAV when there is a reason to; reported once per file."""
        if reason and path not in self.use_pyav:
            self.use_pyav.add(path)
            self._routed.append(path)
            batch["bad_videos"].append(f"{path}: {reason}; {USED_PYAV}")

    def drop(self, job: dict) -> None:
        # The job's batch, which reported the files it routed to PyAV, is never handed out: without this they
        # stayed routed and were never reported (an H.264 file first met in a batch abandoned by `break`
        # never reached the BadInputTracker). Routed again when met, they are reported then.
        self.use_pyav.difference_update(job["routed"])
        super().drop(job)

    def finish(self, job: dict) -> dict:
        batch, paths, indices = job["batch"], job["paths"], job["indices"]
        b, n, t = indices.shape
        size = self.cfg.image_size
        frames = torch.zeros(b, n, t, 3, size, size, device=self.device)
        self._collect_rows(job, frames, batch["bad_videos"])
        self._correct_colours(job, frames)
        dropped = []
        for i in range(b):
            if paths[i] in self.use_pyav:
                try:
                    raw = self.pyav.decode(paths[i], indices[i])  # uint8 [N, T, H, W, 3]
                except VideoDecodeError as err:
                    batch["bad_videos"].append(f"{err.key}: {err.reason}; {DROPPED}")
                    dropped.append(i)
                    continue
                flat = preprocess_frames(raw.reshape(n * t, *raw.shape[2:]), size, self.norm)
                frames[i] = flat.view(n, t, 3, size, size).to(self.device)
        batch["frames"] = frames
        return drop_rows(batch, dropped) if dropped else batch

    def _collect_rows(self, job, frames, bad) -> None:
        rows = job["rows"]
        if not rows:
            return
        if job["dali"] is not None:
            try:
                frames[rows] = self.decoder.collect(job["dali"]).to(self.device)
                return
            except RuntimeError:
                self.decoder.rebuild()
        for i in rows:  # find the offender(s) one sample at a time
            if job["paths"][i] in self.use_pyav:  # another row of this file failed just now: PyAV's turn
                continue
            try:
                frames[i] = self.decoder.collect(self._submit([i], job))[0].to(self.device)
            except RuntimeError as err:
                self.decoder.rebuild()
                self.use_pyav.add(job["paths"][i])
                reason = str(err).strip().splitlines()[-1][:200]
                bad.append(f"{job['paths'][i]}: DALI could not decode ({reason}); {TRYING_PYAV}")

    def _correct_colours(self, job: dict, frames: torch.Tensor) -> None:
        """DALI converted every row by BT.601: rows of videos tagged with another matrix (BT.709, BT.2020 ...)
        get PyAV's colours (color.py)."""
        bgr = self.norm.channel_order == "BGR"  # frames are in the model's order; the fix works in RGB
        mean = self.norm.mean[::-1] if bgr else self.norm.mean
        std = self.norm.std[::-1] if bgr else self.norm.std
        for i in job["rows"]:
            matrix = correction_matrix(job["spaces"][i])
            if matrix is None or job["paths"][i] in self.use_pyav:
                continue
            area = resized_hw(*job["hw"][i], self.cfg.image_size)
            row = frames[i].flip(-3) if bgr else frames[i]
            row = correct_frames(row, matrix, mean, std, area)
            frames[i] = row.flip(-3) if bgr else row

    def _single(self, i: int, job: dict) -> Pack:
        data = job["trimmed"][i] if job["trimmed"] is not None else read_bytes(job["paths"][i])
        return Pack(data, [i], job["dali_indices"][i][None])

    def _submit(self, rows, job) -> dict:
        return self.decoder.submit_packs([self._single(i, job) for i in rows], [job["hw"][i] for i in rows])


class DaliFrameStoreLoader(_OverlappedLoader):
    """Workers read the frame store's JPEG bytes; DALI decodes them in batches (nvJPEG on the GPU).

    A corrupt entry is found by decoding the batch's videos one by one and dropped from the batch.
    """

    def __init__(self, loader, dataset, cfg, device: str = "cuda"):
        self.loader, self.sampler, self.cfg = loader, loader.sampler, cfg
        torch_device = torch.device(device)
        self.device = torch_device
        frames = loader.batch_size * max(cfg.num_clips, cfg.num_test_clips) * cfg.frames_per_clip
        dali_device = "gpu" if torch_device.type == "cuda" else "cpu"
        self.decoder = DaliJpegDecoder(
            cfg.image_size,
            dataset.norm,
            frames,
            dali_device,
            cfg.dali_pipelines,
            cfg.dali_threads,
            torch_device.index or 0,
        )

    def submit(self, batch: dict) -> dict:
        job = {"batch": batch, "jpegs": batch.pop("jpegs"), "hw": batch.pop("video_hw"), "dali": None}
        job["shape"] = tuple(batch.pop("frame_indices").shape)
        try:
            job["dali"] = self.decoder.submit(job["jpegs"], job["shape"], job["hw"])
        except RuntimeError:
            self.decoder.rebuild()
        return job

    def finish(self, job: dict) -> dict:
        batch, jpegs, shape, hw = job["batch"], job["jpegs"], job["shape"], job["hw"]
        if job["dali"] is not None:
            try:
                batch["frames"] = self.decoder.collect(job["dali"])
                return batch
            except RuntimeError:
                self.decoder.rebuild()
        frames, dropped = [], []
        for i in range(shape[0]):
            try:
                frames.append(self.decoder.decode([jpegs[i]], (1, *shape[1:]), [hw[i]]))
            except RuntimeError:
                self.decoder.rebuild()
                batch["bad_videos"].append(f"{batch['video_ids'][i]}: corrupt frame store entry; {DROPPED}")
                dropped.append(i)
        kept = drop_rows(batch, dropped)
        size = self.cfg.image_size
        empty = torch.zeros(0, *shape[1:], 3, size, size, device=self.device)  # every row dropped
        kept["frames"] = torch.cat(frames) if frames else empty
        return kept


def drop_rows(batch: dict, dropped: list[int]) -> dict:
    """The batch without the given rows (tensors and per-sample lists alike)."""
    b = len(batch["index"])
    keep = [i for i in range(b) if i not in set(dropped)]
    out = {}
    for key, value in batch.items():
        if key == "bad_videos":
            out[key] = value
        elif isinstance(value, torch.Tensor) and value.shape[:1] == (b,):
            out[key] = value[torch.tensor(keep, dtype=torch.long, device=value.device)]
        elif isinstance(value, list) and len(value) == b:
            out[key] = [value[i] for i in keep]
        else:
            out[key] = value
    return out
