"""Markdown summary of a Figure-5 run: both paths per point, speedups, MFU, the targets, the profile."""

from __future__ import annotations

from pathlib import Path

# Issue 7's targets, meaningful for the base preset under a 32 GiB cap on the GPU test machine.
TARGET_SPEEDUP = 3.0  # optimized / eager frames/s at Ntrain=16, T=1, batch 8
TARGET_MFU = 0.35
TARGET_MAX_BATCH = {16: 48, 2: 380}  # Ntrain -> largest batch, T=1
PAPER_MAX_BATCH = {2: 190, 16: 16}


def _rows(result: dict, panel: str, path: str) -> dict[tuple[int, int], dict]:
    return {
        (r["n_train"], r["frames_per_clip"]): r
        for r in result["rows"]
        if r["panel"] == panel and r["path"] == path
    }


def _fmt(x, spec: str = ".1f", none: str = "-") -> str:
    return none if x is None else format(x, spec)


def _paired_points(result: dict, panel: str, key: str) -> tuple[str, list[tuple]]:
    """The panel's axis label and its points as (x, eager row, optimized row), sorted by point."""
    eager, opt = _rows(result, panel, "eager"), _rows(result, panel, "optimized")
    label = "Ntrain" if key == "n_train" else "T"
    points = sorted(set(eager) | set(opt))
    axis = 0 if key == "n_train" else 1
    return label, [(pt[axis], eager.get(pt, {}), opt.get(pt, {})) for pt in points]


def _paired_table(result: dict, panel: str, key: str, headers: list[str], cells) -> list[str]:
    """A markdown table with one row per point of the panel: the axis value, then cells(eager, optimized)."""
    label, points = _paired_points(result, panel, key)
    if not points:
        return []
    lines = ["| " + " | ".join([label, *headers]) + " |", "|" + "---|" * (1 + len(headers))]
    lines += ["| " + " | ".join([str(x), *cells(e, o)]) + " |" for x, e, o in points]
    return lines


def _ratio(o: dict, e: dict, field: str) -> float | None:
    return o[field] / e[field] if e.get(field) and o.get(field) else None


def _time_table(result: dict, panel: str, key: str) -> list[str]:
    headers = ["eager ms", "optimized ms", "speedup", "eager frames/s", "optimized frames/s", "eager MFU"]
    headers += ["optimized MFU", "eager peak GiB", "optimized peak GiB"]
    return _paired_table(
        result,
        panel,
        key,
        headers,
        lambda e, o: [
            _fmt(e.get("median_ms")),
            _fmt(o.get("median_ms")),
            _fmt(_ratio(o, e, "frames_per_s"), ".2f") + "x",
            *(_fmt(r.get("frames_per_s"), ".0f") for r in (e, o)),
            *(_fmt(r.get("mfu"), ".1%") for r in (e, o)),
            *(_fmt(r.get("peak_gib"), ".2f") for r in (e, o)),
        ],
    )


def _batch_cell(r: dict) -> str:
    if not r:
        return "-"
    if r.get("error"):
        return "error"
    if r.get("max_batch_limit_reached"):  # the limit fit: only a lower bound, whatever the search's budget
        return f">={r['batch']} (--max-batch-limit)"
    if r.get("max_batch_exact") is not False:
        return str(r["batch"]) + (" (batch 1 over the cap)" if r.get("batch") == 0 else "")
    # a search its budget stopped: the answer is somewhere from `batch` to just below the first failure
    high = r.get("first_failure")
    return f"{r['batch']}..{high - 1} (search cut)" if high else f">={r['batch']} (search cut)"


def _size_table(result: dict, panel: str, key: str) -> list[str]:
    headers = ["eager max batch", "optimized max batch", "ratio", "eager GiB/sample", "optimized GiB/sample"]
    return _paired_table(
        result,
        panel,
        key,
        headers,
        lambda e, o: [
            _batch_cell(e),
            _batch_cell(o),
            # a search cut by its budget gave a lower bound: no ratio of bounds
            _fmt(
                _ratio(o, e, "batch") if e.get("max_batch_exact") and o.get("max_batch_exact") else None,
                ".2f",
            ),
            *(_fmt(r.get("bytes_per_sample_gib"), ".3f") for r in (e, o)),
        ],
    )


def _targets(result: dict) -> list[str]:
    full_size = result["config"].get("hidden_size") == 768 and result["config"].get("image_size") == 448
    scope = (
        ""
        if full_size and result.get("mem_cap_gib") == 32
        else " (not the base preset at L=448 under 32 GiB: these lines check the plumbing, not the targets)"
    )
    lines = [f"## Targets{scope}", ""]
    b_e, b_o = _rows(result, "b", "eager").get((16, 1), {}), _rows(result, "b", "optimized").get((16, 1), {})
    if b_e.get("frames_per_s") and b_o.get("frames_per_s"):
        speed = b_o["frames_per_s"] / b_e["frames_per_s"]
        lines.append(
            f"- speed at Ntrain=16, T=1, batch {result.get('time_batch', b_o['batch'])}: {speed:.2f}x eager "
            f"(target >= {TARGET_SPEEDUP:g}x): {'met' if speed >= TARGET_SPEEDUP else 'NOT met'}"
        )
    if b_o.get("mfu") is not None:
        lines.append(
            f"- optimized MFU at Ntrain=16: {b_o['mfu']:.1%} of bf16 peak "
            f"{result.get('peak_bf16_tflops', '?')} TFLOP/s "
            f"(target >= {TARGET_MFU:.0%}): {'met' if b_o['mfu'] >= TARGET_MFU else 'NOT met'}"
        )
    a_o = _rows(result, "a", "optimized")
    for n, target in TARGET_MAX_BATCH.items():
        r = a_o.get((n, 1))
        if r and not r.get("error"):
            # A search cut by the time budget only bounds the answer: it meets the target when even its
            # lower bound does, and is unknown when its range spans the target.
            exact = r.get("max_batch_exact") is not False
            high = r.get("first_failure")
            if r["batch"] >= target:
                verdict = "met"
            elif exact or (high and high - 1 < target):
                verdict = "NOT met"
            elif r.get("max_batch_limit_reached"):
                verdict = "not established (raise --max-batch-limit)"
            else:
                verdict = "not established (search cut)"
            lines.append(
                f"- max batch at Ntrain={n}: {_batch_cell(r)} (paper V100: {PAPER_MAX_BATCH[n]}; "
                f"target >= {target}): {verdict}"
            )
    return lines if len(lines) > 2 else []


def _ablation(result: dict) -> list[str]:
    rows = [r for r in result["rows"] if r["panel"] == "ablation"]
    if not rows:
        return []
    # The eager row's, not the first row's: when eager failed to build (its error is a "build" row) or was
    # not timed, every step was shown "vs eager" against the first step that ran.
    base = next((r.get("frames_per_s") for r in rows if r["path"] == "eager"), None)
    lines = [
        f"## Each optimization step (Ntrain={rows[0]['n_train']}, T=1, batch {rows[0]['batch']})",
        "",
        "| step | ms | frames/s | vs eager | MFU | peak GiB |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        # against the eager row of the row's own run (merged files each bring theirs); older rows: this one
        own = r.get("eager_frames_per_s") or base
        rel = r["frames_per_s"] / own if own and r.get("frames_per_s") else None
        cell = r["error"] if r.get("error") else _fmt(r.get("median_ms"))
        lines.append(
            f"| {r['path']} | {cell} | {_fmt(r.get('frames_per_s'), '.0f')} | {_fmt(rel, '.2f')}x | "
            f"{_fmt(r.get('mfu'), '.1%')} | {_fmt(r.get('peak_gib'), '.2f')} |"
        )
    return lines


def _profile(result: dict) -> list[str]:
    prof = result.get("profile")
    if not prof:
        return []
    if prof.get("error"):
        return [f"## Where the time goes\n\nThe profile of {prof['options']['name']} failed: {prof['error']}"]
    lines = [
        f"## Where the time goes ({prof['options']['name']} path, Ntrain={prof['n_clips']}, "
        f"batch {prof['batch']})",
        "",
        "| part | ms | share of the step |",
        "|---|---|---|",
    ]
    step = prof["parts_ms"].get("full_step") or 0
    for part, ms in prof["parts_ms"].items():
        lines.append(f"| {part} | {ms:.1f} | {_fmt(ms / step if step else None, '.0%')} |")
    if prof.get("table_file"):
        lines.append(f"\ntorch.profiler table: `{Path(prof['table_file']).name}`")
    return lines


def write_summary(result: dict, path: str) -> None:
    # An older run's result may lack a header key (memory_accounting, torch, ...): "?" in its place, not a
    # KeyError after the rows were joined.
    cfg = result["config"]
    c = {k: cfg.get(k, "?") for k in ("backbone_style", "freeze_at", "num_layers", "hidden_size")}
    c |= {k: cfg.get(k, "?") for k in ("image_size", "max_text_len")}
    layers = tuple(cfg["backbone_layers"]) if "backbone_layers" in cfg else "?"
    cap = result.get("mem_cap_gib")
    lines = [
        f"# ClipBERT Figure 5 on {result['device']} ({result['date_utc']})",
        "",
        f"Model: {c['backbone_style']} ResNet {layers} "
        f"(FrozenBN, freeze_at={c['freeze_at']}) + BERT {c['num_layers']}x{c['hidden_size']}, "
        f"L={c['image_size']}, text length {c['max_text_len']}, "
        f"1 text per video. Memory cap {'?' if cap is None else format(cap, 'g')} GiB "
        f"({result.get('memory_accounting', 'accounting not recorded')}). "
        f"torch {result.get('torch', '?')}. Wall time {_fmt(result.get('wall_s'), '.0f', '?')} s.",
        "",
    ]
    if result.get("complete") is False:  # <tag>.partial.md of a run stopped part-way
        stopped = f" ({result['stopped']})" if result.get("stopped") else ""
        lines += [f"**Stopped before the end{stopped}: only the points measured before it.**", ""]
    if result.get("merged_from"):
        runs = "; ".join(
            f"`{m['file']}`" + (" (stopped by its caller's time limit)" if "partial" in m["file"] else "")
            for m in result["merged_from"]
        )
        wall = "their sum" if "wall_s_runs" in result else "the first one's"  # older joins kept the first
        lines += [f"Joined from separate runs (the wall time is {wall}): {runs}.", ""]
    for title, fn, panel, key in (
        ("(a) largest batch vs Ntrain, T=1", _size_table, "a", "n_train"),
        ("(b) forward+backward time vs Ntrain, T=1", _time_table, "b", "n_train"),
        ("(c) largest batch vs T, Ntrain=1", _size_table, "c", "frames_per_clip"),
        ("(d) forward+backward time vs T, Ntrain=1", _time_table, "d", "frames_per_clip"),
    ):
        table = fn(result, panel, key)
        if table:
            lines += [f"## {title}", ""] + table + [""]
    for section in (_targets(result), _ablation(result), _profile(result)):
        if section:
            lines += section + [""]
    errors = [
        f"- ({r['panel']}) {r['path']} Ntrain={r['n_train']} T={r['frames_per_clip']}: {r['error']}"
        for r in result["rows"]
        if r.get("error")
    ]
    if errors:
        lines += ["## Errors", ""] + errors + [""]
    Path(path).write_text("\n".join(lines))
