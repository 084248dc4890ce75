"""Batch assembly: items of the task datasets -> the batch dict of docs/ARCHITECTURE.md ("Batches")."""

from __future__ import annotations

import numpy as np
import torch


def pad_token_lists(rows: list[list[int]], pad_id: int, length: int | None = None):
    """Token id lists -> (ids int64 [R, Lt], attention_mask int64 [R, Lt]), right-padded with pad_id."""
    length = length or max(len(row) for row in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), length), dtype=torch.int64)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row, dtype=torch.int64)
        mask[r, : len(row)] = 1
    return ids, mask


class Collator:
    """Callable collate_fn (picklable for worker processes); pads texts to the longest in the batch."""

    def __init__(self, pad_id: int = 0, pack_rows: int = 1):
        self.pad_id = pad_id
        self.pack_rows = pack_rows  # DataConfig.dali_pack: cut videos per DALI sample, packed in the worker

    def __call__(self, items: list[dict]) -> dict:
        batch = {
            "index": torch.tensor([item["index"] for item in items], dtype=torch.int64),
            "video_ids": [item["video_id"] for item in items],
            "bad_videos": [name for item in items for name in item["bad_videos"]],
        }
        if "frames" in items[0]:  # uint8, normalized on the loader's device
            batch["frames"] = torch.stack([item["frames"] for item in items])  # [B, N, T, 3, L, L]
            batch["frames_hw"] = torch.tensor(
                [item["frames_hw"] for item in items], dtype=torch.int64
            )  # [B, 2]
        if "frame_indices" in items[0]:  # DALI decodes these later, in the loader
            batch["frame_indices"] = torch.from_numpy(np.stack([item["frame_indices"] for item in items]))
            batch["video_hw"] = [tuple(item["video_hw"]) for item in items]
        if "video_path" in items[0]:
            batch["video_paths"] = [item["video_path"] for item in items]
            batch["video_codecs"] = [item["video_codec"] for item in items]
            batch["video_colorspaces"] = [item.get("video_colorspace", "") for item in items]
            batch["video_rotations"] = [item.get("video_rotation", 0) for item in items]
        if "video_bytes" in items[0]:  # trimmed videos (dali_pipelines/trim.py) and their frames' indices
            batch["video_bytes"] = [item["video_bytes"] for item in items]
            batch["dali_indices"] = torch.from_numpy(np.stack([item["dali_indices"] for item in items]))
            if (
                self.pack_rows > 1
            ):  # collate runs in the DataLoader worker: the remux stays off the main process
                from dali_pipelines.pack import pack_cuts

                cuts, indices = batch["video_bytes"], [item["dali_indices"] for item in items]
                batch["video_packs"] = pack_cuts(cuts, indices, self.pack_rows)
        if "jpegs" in items[0]:
            batch["jpegs"] = [item["jpegs"] for item in items]  # B lists of N*T encoded frames
        if "input_ids" in items[0]:
            batch.update(self._texts(items))
        if "labels" in items[0]:
            batch["labels"] = torch.tensor(
                [item["labels"] for item in items], dtype=torch.int64
            )  # [B] | [B, M]
        if "answer_type" in items[0]:
            batch["answer_types"] = [item["answer_type"] for item in items]
        if "answer_labels" in items[0]:  # VQA soft targets
            batch.update(self._answers(items))
        if "word_targets" in items[0]:  # uint8 [B, W] multi-hot caption words (visual-word loss)
            batch["word_targets"] = torch.from_numpy(np.stack([item["word_targets"] for item in items]))
        if "itm_labels" in items[0]:
            batch["itm_labels"] = torch.tensor([item["itm_labels"] for item in items], dtype=torch.int64)
        return batch

    @staticmethod
    def _answers(items: list[dict]) -> dict:
        """VQA: each item's vocabulary answers and their scores, right-padded with label -100 and score 0."""
        width = max([len(item["answer_labels"]) for item in items] + [1])
        labels = torch.full((len(items), width), -100, dtype=torch.int64)  # [B, A]
        scores = torch.zeros((len(items), width), dtype=torch.float32)  # [B, A]
        for row, item in enumerate(items):
            count = len(item["answer_labels"])
            labels[row, :count] = torch.tensor(item["answer_labels"], dtype=torch.int64)
            scores[row, :count] = torch.tensor(item["answer_scores"], dtype=torch.float32)
        return {
            "answer_labels": labels,
            "answer_scores": scores,
            "answered": torch.tensor([item["answered"] for item in items], dtype=torch.bool),  # [B]
            "question_ids": [item["question_id"] for item in items],
        }

    def _texts(self, items: list[dict]) -> dict:
        num_texts = {len(item["input_ids"]) for item in items}
        if len(num_texts) != 1:
            raise ValueError(f"items in a batch have different numbers of texts M: {sorted(num_texts)}")
        rows = [ids for item in items for ids in item["input_ids"]]
        b, m = len(items), num_texts.pop()
        length = max(len(row) for row in rows)
        ids, mask = pad_token_lists(rows, self.pad_id, length)
        out = {"input_ids": ids.view(b, m, length), "attention_mask": mask.view(b, m, length)}
        if "mlm_labels" in items[0]:
            labels = [row for item in items for row in item["mlm_labels"]]
            out["mlm_labels"] = pad_token_lists(labels, -100, length)[0].view(b, m, length)
        return out
