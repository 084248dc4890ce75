"""Training curves (loss and evaluation metrics per step) as one PNG, from steps.jsonl and metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

# counts, not metrics: on the metrics' axis they would flatten every curve
SKIP_KEYS = {
    "step",
    "split",
    "eval_seconds",
    "num_texts",
    "num_videos",
    "num_examples",
    "num_answered",
    "bad_videos",
    "unscored_videos",
}


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(output_dir: str | Path) -> Path | None:
    """Writes <output_dir>/training_curves.png; returns its path (None when there is nothing to plot)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    output_dir = Path(output_dir)
    steps = _read_jsonl(output_dir / "steps.jsonl")
    evals = _read_jsonl(output_dir / "metrics.jsonl")
    if not steps and not evals:
        return None
    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(11, 4))
    if steps:
        # a step whose micro batches were all bad has no loss
        updated = [s for s in steps if s.get("loss") is not None]
        ax_loss.plot([s["step"] for s in updated], [s["loss"] for s in updated], lw=1)
    ax_loss.set(xlabel="optimizer step", ylabel="training loss", title="loss")
    for split in sorted({e.get("split", "") for e in evals}):
        # eval.only records of an exported model have no step
        rows = [e for e in evals if e.get("split", "") == split and e.get("step") is not None]
        if not rows:
            continue
        for key in rows[0]:
            if key in SKIP_KEYS or not isinstance(rows[0][key], (int, float)) or "meanr" in key:
                continue
            ax_eval.plot(
                [r["step"] for r in rows], [r.get(key) for r in rows], marker="o", label=f"{split}/{key}"
            )
    ax_eval.set(xlabel="optimizer step", title="evaluation")
    if evals:
        ax_eval.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = output_dir / "training_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
