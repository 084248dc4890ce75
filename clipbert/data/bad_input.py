"""Bad-input tracking: each bad file is warned about once; a per-epoch summary is logged.

DataLoader workers are separate processes, so the datasets carry the names of replaced files in each batch
(`bad_videos`) and the trainer's main-process tracker accumulates them with `update(batch)`.

The DALI loader also reports there the files it had PyAV decode instead (routed up front, or after DALI failed
on them). Those were decoded and trained on as usual: they are PyAV fallbacks, kept apart from the bad files,
unless PyAV failed on them too (the row is then dropped, a bad file).
"""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger(__name__)

# How the DALI loader's `bad_videos` entries end ('file: reason; <end>'; dali_pipelines/loader.py builds them
# with these): the first two are PyAV fallbacks, the last a bad file.
USED_PYAV = "used PyAV"  # routed to PyAV before DALI saw it (dali_pipelines/routing.py)
TRYING_PYAV = "trying PyAV"  # DALI failed on it: PyAV decodes it from now on
DROPPED = "sample dropped"  # PyAV failed on it too: its row left the batch

SHOWN = 5  # files a summary line names


def is_fallback(reason: str) -> bool:
    """Whether an entry's reason says PyAV decodes the file instead of DALI (not that it is bad)."""
    return reason.endswith((USED_PYAV, TRYING_PYAV))


def _named(files) -> str:
    """'a, b, c, d, e and 7 more' of sorted names."""
    files = sorted(files)
    more = f" and {len(files) - SHOWN} more" if len(files) > SHOWN else ""
    return ", ".join(files[:SHOWN]) + more


class BadInputTracker:
    def __init__(self, logger: logging.Logger | None = None):
        self.log = logger or log
        self.total: Counter[str] = Counter()  # file -> times met, over the whole run
        self.epoch: Counter[str] = Counter()  # same, since the last summary
        # PyAV fallbacks (file -> why not DALI) since the last summary. The DALI loader reports each once per
        # process, so this holds the files first met since then, not every one met.
        self.pyav: dict[str, str] = {}
        self.pyav_reported: set[str] = set()  # fallbacks an epoch summary named already, over all ranks

    def record(self, name: str, reason: str = "") -> None:
        if is_fallback(reason):
            self._record_fallback(name, reason)
            return
        if name not in self.total:
            # DALI's note says the sample was dropped; a dataset's entry means another example stood in for it
            done = reason.endswith(DROPPED)
            self.log.warning("bad input %s: %s", name, reason if done else f"{reason or 'bad'}; replaced")
        self.total[name] += 1
        self.epoch[name] += 1

    def _record_fallback(self, name: str, reason: str) -> None:
        """Once per file: it was decoded (by PyAV) and trained on, so not 'bad input ... replaced'."""
        if name in self.pyav or name in self.pyav_reported:
            return
        why = reason.rpartition("; ")[0] or reason  # without the "; used PyAV" end
        self.pyav[name] = why
        if name not in self.total:  # a file PyAV failed on too was just warned about as bad input
            self.log.info("%s: %s; decoded by PyAV instead of DALI", name, why)

    def update(self, batch: dict) -> None:
        """Accumulate the `bad_videos` of a batch (entries may be 'file' or 'file: reason')."""
        entries = [entry.partition(": ")[::2] for entry in batch.get("bad_videos", [])]
        # the bad entries first: a file routed to PyAV and dropped by it in this batch is not logged as
        # "decoded by PyAV"
        for name, reason in sorted(entries, key=lambda entry: is_fallback(entry[1])):
            self.record(name, reason)

    def summary(self, epoch: int | None = None) -> dict:
        """Log and return this epoch's counts, then start a new epoch.

        The PyAV fallbacks not named before come apart from the bad files, under `pyav_fallbacks` (how many)
        and `pyav_fallback_files` (file -> why not DALI), present only when there are some."""
        # "hits": times a bad file was met (a sample that tried two bad videos meets two), not samples
        result = {"epoch": epoch, "bad_files": len(self.epoch), "hits": sum(self.epoch.values())}
        result["files"] = dict(self.epoch)
        # a file PyAV failed on too is a bad file, whichever rank or batch dropped it
        pyav = {n: r for n, r in self.pyav.items() if n not in self.epoch and n not in self.pyav_reported}
        if pyav:
            result["pyav_fallbacks"] = len(pyav)
            result["pyav_fallback_files"] = dict(sorted(pyav.items()))
            self.log.info(
                "epoch %s: %d video file(s) DALI could not decode were decoded by PyAV and trained on as "
                "usual: %s",
                epoch,
                len(pyav),
                _named(pyav),
            )
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
        self.pyav_reported |= pyav.keys()
        self.epoch = Counter()
        self.pyav = {}
        return result
