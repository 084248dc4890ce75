"""Training curves as one PNG, from steps.jsonl and metrics.jsonl: the loss (raw and smoothed, with its
terms), the learning rates, the evaluation scores in percent and the ranks (lower is better), each on its own
axes. One axes for all metrics drew rsum (~400) over R@1 (~20) and hid the curves under a legend."""

from __future__ import annotations

import json
import math
from pathlib import Path

from clipbert.train.logging import get_logger

# counts and sums, not scores: plotted next to the percentages they would flatten every curve
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
    "rsum",
}
# a split's points keep their metric's colour; the split shows in the marker and line
SPLIT_STYLE = {"val": dict(marker="o", ls="-"), "test": dict(marker="*", ls="--", ms=12)}
OTHER_SPLIT_STYLE = dict(marker="s", ls=":")


def _read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a log, without the lines that are not one (a line cut short by a crash, zeros left
    by a lost write), which are counted in a warning. Why: the plot is drawn at the end of a run, and one bad
    line raised a JSONDecodeError there, after the training, instead of the curves."""
    if not path.is_file():
        return []
    rows, bad = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append(number)
    if bad:
        get_logger().warning(
            "training curves: %s: skipped %d line(s) that are not a JSON object (line %s), e.g. cut short "
            "by a crash",
            path,
            len(bad),
            ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else ""),
        )
    return rows


def smooth(values: list[float], window: int) -> list[float]:
    """Bias-corrected exponential moving average over about `window` points, so the trend shows through
    per-step noise without the lag of a plain EMA at the start."""
    beta = 1.0 - 1.0 / max(window, 1)
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = beta * avg + (1.0 - beta) * v
        out.append(avg / (1.0 - beta**i) if beta > 0 else v)
    return out


def metric_kind(key: str) -> str | None:
    """'rank' for median/mean ranks, 'percent' for scores, None for what is not plotted."""
    if key in SKIP_KEYS:
        return None
    return "rank" if key.endswith(("medr", "meanr")) else "percent"


def eval_series(evals: list[dict]) -> dict[str, dict[str, dict[str, tuple[list, list]]]]:
    """{kind: {metric: {split: (steps, values)}}} from metrics.jsonl rows; eval.only records of an exported
    model have no step and are left out, as are non-numeric values. In the order of steps, not of the file:
    eval.only of an earlier checkpoint appends its row after later ones, and its split's line went back."""
    series: dict = {}
    stepped = [row for row in evals if isinstance(row.get("step"), (int, float))]
    for row in sorted(stepped, key=lambda row: row["step"]):  # stable: one step's rows keep their order
        split = row.get("split", "")
        for key, value in row.items():
            kind = metric_kind(key)
            if kind is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                continue
            steps, values = series.setdefault(kind, {}).setdefault(key, {}).setdefault(split, ([], []))
            steps.append(row["step"])
            values.append(value)
    return series


def _plot_loss(ax, steps: list[dict]) -> None:
    # a step whose micro batches were all bad has no loss
    updated = [s for s in steps if s.get("loss") is not None]
    xs = [s["step"] for s in updated]
    window = max(1, len(xs) // 50)
    ax.plot(xs, [s["loss"] for s in updated], lw=0.6, alpha=0.3, color="C0")
    ax.plot(xs, smooth([s["loss"] for s in updated], window), lw=1.5, color="C0", label="loss", **_dot(xs))
    terms = sorted({k for s in updated for k in s if k.endswith("_loss") and s[k] is not None})
    for i, key in enumerate(terms, start=1):
        rows = [s for s in updated if s.get(key) is not None]
        at = [s["step"] for s in rows]
        ax.plot(at, smooth([s[key] for s in rows], window), lw=1, color=f"C{i}", label=key, **_dot(at))
    ax.set(xlabel="optimizer step", ylabel="training loss", title=f"loss (smoothed over ~{window} steps)")
    ax.legend(fontsize=7)


def _dot(xs: list) -> dict:
    """A marker for a curve of one point, which a line alone does not draw: a run of one step showed empty
    loss and learning-rate axes."""
    return {"marker": "o"} if len(xs) == 1 else {}


def _plot_lr(ax, steps: list[dict], keys: list[str]) -> None:
    for key in keys:
        rows = [s for s in steps if s.get(key) is not None]
        xs = [s["step"] for s in rows]
        ax.plot(xs, [s[key] for s in rows], lw=1, label=key, **_dot(xs))
    ax.set(xlabel="optimizer step", ylabel="learning rate", title="learning rate")
    ax.legend(fontsize=7)


def _plot_metrics(ax, by_metric: dict, title: str, ylabel: str) -> None:
    for i, (key, by_split) in enumerate(sorted(by_metric.items())):
        color = f"C{i % 10}" if len(by_metric) <= 10 else _tab20(i)
        # the metric's name once, on its val curve where there is one; the splits' styles are in the title
        labelled = "val" if "val" in by_split else min(by_split)
        for split, (xs, ys) in sorted(by_split.items()):
            style = SPLIT_STYLE.get(split, OTHER_SPLIT_STYLE)
            label = key if split == labelled else None
            ax.plot(xs, ys, color=color, label=label, **style)
    splits = sorted({s for by_split in by_metric.values() for s in by_split})
    names = ", ".join(f"{s} {'line' if s == 'val' else 'star' if s == 'test' else 'dotted'}" for s in splits)
    ax.set(xlabel="optimizer step", ylabel=ylabel, title=f"{title} ({names})")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _tab20(i: int):
    import matplotlib

    return matplotlib.colormaps["tab20"](i % 20)


def plot_curves(output_dir: str | Path) -> Path | None:
    """Writes <output_dir>/training_curves.png; returns its path (None when there is nothing to plot)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    output_dir = Path(output_dir)
    steps = _read_jsonl(output_dir / "steps.jsonl")
    series = eval_series(_read_jsonl(output_dir / "metrics.jsonl"))
    lr_keys = sorted({k for s in steps for k in s if k == "lr" or k.endswith("_lr")})
    panels = []
    if steps:
        panels.append(lambda ax: _plot_loss(ax, steps))
    if lr_keys:
        panels.append(lambda ax: _plot_lr(ax, steps, lr_keys))
    if "percent" in series:
        panels.append(lambda ax: _plot_metrics(ax, series["percent"], "evaluation", "score (%)"))
    if "rank" in series:
        panels.append(lambda ax: _plot_metrics(ax, series["rank"], "ranks, lower is better", "rank"))
    if not panels:
        return None
    ncols = min(len(panels), 2)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(7 * ncols, 4 * nrows), squeeze=False)
    for draw, ax in zip(panels, axes.flat):
        draw(ax)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    path = output_dir / "training_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
