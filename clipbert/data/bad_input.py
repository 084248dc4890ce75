"""Bad-input tracking: each bad file is warned about once; a per-epoch summary is logged.

DataLoader workers are separate processes, so the datasets carry the names of replaced files in each batch
(`bad_videos`) and the trainer's main-process tracker accumulates them with `update(batch)`.
"""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger(__name__)


class BadInputTracker:
    def __init__(self, logger: logging.Logger | None = None):
        self.log = logger or log
        self.total: Counter[str] = Counter()  # file -> times met, over the whole run
        self.epoch: Counter[str] = Counter()  # same, since the last summary

    def record(self, name: str, reason: str = "") -> None:
        if name not in self.total:
            # DALI's notes say what became of the sample (decoded by PyAV, dropped); a dataset's entry means
            # another example stood in for it
            done = reason.endswith(("used PyAV", "trying PyAV", "sample dropped"))
            self.log.warning("bad input %s: %s", name, reason if done else f"{reason or 'bad'}; replaced")
        self.total[name] += 1
        self.epoch[name] += 1

    def update(self, batch: dict) -> None:
        """Accumulate the `bad_videos` of a batch (entries may be 'file' or 'file: reason')."""
        for entry in batch.get("bad_videos", []):
            name, _, reason = entry.partition(": ")
            self.record(name, reason)

    def summary(self, epoch: int | None = None) -> dict:
        """Log and return this epoch's counts, then start a new epoch."""
        # "hits": times a bad file was met (a sample that tried two bad videos meets two), not samples
        result = {"epoch": epoch, "bad_files": len(self.epoch), "hits": sum(self.epoch.values())}
        result["files"] = dict(self.epoch)
        if self.epoch:
            self.log.warning(
                "epoch %s: %d bad file(s), met %d time(s): %s",
                epoch,
                result["bad_files"],
                result["hits"],
                ", ".join(sorted(self.epoch)),
            )
        else:  # debug: a line every epoch drowned the log of a small set's many short epochs
            self.log.debug("epoch %s: no bad input", epoch)
        self.epoch = Counter()
        return result
