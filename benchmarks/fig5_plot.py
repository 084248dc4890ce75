"""The 4-panel figure laid out like the paper's Figure 5, from the benchmark's JSON rows.

(a) max batch vs Ntrain (T=1)   (b) fwd+bwd time vs Ntrain (T=1, batch 8)
(c) max batch vs T (Ntrain=1)   (d) fwd+bwd time vs T (Ntrain=1, batch 8)
Both paths are drawn; the paper's two stated points (32 GB V100) are marked on (a). A batch search that its
time budget stopped is drawn hollow, with a dotted range up to the smallest batch that failed.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display on the benchmark machines
import matplotlib.pyplot as plt  # noqa: E402

PAPER_POINTS = {"n_train": [2, 16], "max_batch": [190, 16]}  # paper Sec. 4.2, NVIDIA V100 32 GB
STYLE = {"eager": dict(color="tab:blue", marker="o"), "optimized": dict(color="tab:red", marker="s")}
PANELS = (
    ("a", "n_train", "max_batch", "Ntrain (T=1)", "max batch size"),
    ("b", "n_train", "median_ms", "Ntrain (T=1, batch 8)", "fwd+bwd time (ms)"),
    ("c", "frames_per_clip", "max_batch", "T (Ntrain=1)", "max batch size"),
    ("d", "frames_per_clip", "median_ms", "T (Ntrain=1, batch 8)", "fwd+bwd time (ms)"),
)


def _points(rows: list[dict], panel: str, path: str, x_key: str, y_key: str) -> list[tuple]:
    """(x, y, row) of a path's measured points on a panel, in x order."""
    pts = [
        (r[x_key], r["batch"] if y_key == "max_batch" else r[y_key], r)
        for r in rows
        if r["panel"] == panel
        and r["path"] == path
        and not r.get("error")
        and (y_key == "max_batch" or r[y_key])
    ]
    return sorted(pts, key=lambda p: p[0])


def _draw_bracket(ax, x, row, color) -> str:
    """A search stopped by its budget: its answer lies in [batch, first_failure - 1]; draw that range."""
    high = row.get("first_failure")
    if high is None:
        return f">={row['batch']}"
    ax.vlines(x, row["batch"], high - 1, colors=color, linestyles="dotted", linewidth=1.5)
    ax.plot([x], [high - 1], marker="v", color=color, markersize=5)
    return f"{row['batch']}..{high - 1}"


def plot_figure5(rows: list[dict], title: str, out_png: str, mem_cap_gib: float) -> None:
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    for ax, (panel, x_key, y_key, xlabel, ylabel) in zip(axes, PANELS):
        for path, style in STYLE.items():
            pts = _points(rows, panel, path, x_key, y_key)
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=path, **style)
            if y_key == "median_ms":  # the timed batch, from the rows (--time-batch; 8 by default)
                xlabel = xlabel.replace("batch 8", f"batch {pts[0][2]['batch']}")
            for x, y, row in pts:
                text = f"{y:.0f}"
                if y_key == "max_batch" and row.get("max_batch_exact") is False:
                    # hollow marker: a lower bound, with the range the search had not yet ruled out
                    ax.plot([x], [y], marker=style["marker"], color=style["color"], mfc="white", zorder=4)
                    text = _draw_bracket(ax, x, row, style["color"])
                ax.annotate(
                    text,
                    (x, y),
                    textcoords="offset points",
                    xytext=(0, 5),
                    fontsize=7,
                    ha="center",
                    color=style["color"],
                )
        if panel == "a":
            ax.scatter(
                PAPER_POINTS["n_train"],
                PAPER_POINTS["max_batch"],
                marker="*",
                s=140,
                color="black",
                zorder=5,
                label="paper (V100 32 GB)",
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4, 8, 16], labels=["1", "2", "4", "8", "16"])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        cap = f", cap {mem_cap_gib:g} GiB" if y_key == "max_batch" else ""
        ax.set_title(f"({panel}){cap}", fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
