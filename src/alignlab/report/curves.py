"""The report's training curves: for each method's best configuration (section 1), the loss and the
reward margin against the optimizer step, from its runs' metrics.jsonl — the mean over its seeds, each
seed a thin line — and VAR's weight entropy (alignlab.objectives.losses.weight_entropy).

Curves are drawn at the steps every seed with a training log logged (seeds share their
configuration, so normally all of them). A metric that no step has a number for (the margin of SFT,
which trains on chosen responses alone) is not drawn.
"""

from __future__ import annotations

import numpy as np
from matplotlib.ticker import MaxNLocator

from alignlab.analysis import best_run
from alignlab.analysis.runs import method_label
from alignlab.report.blocks import Plot, Section, Sweep
from alignlab.report.figures import new_figure, png_bytes

CURVES = [("loss", "loss"), ("margin", "reward margin (chosen − rejected)"),
          ("weight_entropy", "weight entropy (nats)")]


def curve_data(config) -> dict | None:
    """Per metric of CURVES, the configuration's seeds' values at the steps all of them logged
    (`per_seed`, [seeds, steps]) and their mean; None when none of its runs has a training log."""
    runs = [r for r in config.runs if "step" in r.training_log]
    if not runs:
        return None
    steps = sorted(set.intersection(*(set(r.training_log["step"].tolist()) for r in runs)))
    data = {"configuration": config.name, "runs": [r.name for r in runs], "step": [int(s) for s in steps],
            "per_seed": {}}
    for metric, _ in CURVES:
        if not all(metric in r.training_log for r in runs):
            continue
        by_step = [dict(zip(r.training_log["step"].tolist(), r.training_log[metric].tolist())) for r in runs]
        per_seed = np.array([[values[s] for s in steps] for values in by_step])
        if np.isnan(per_seed).all():
            continue
        data["per_seed"][metric] = per_seed
        data[metric] = per_seed.mean(axis=0).tolist()
    return data


def curves_figure(curves: dict[str, dict], colors: dict) -> bytes:
    """A row per method, a column per metric of CURVES that any method has."""
    metrics = [(m, title) for m, title in CURVES if any(m in data["per_seed"] for data in curves.values())]
    fig = new_figure(0.6 + 3.2 * len(metrics), 0.4 + 2.3 * len(curves))
    axes = fig.subplots(len(curves), len(metrics), squeeze=False)
    for row, (method, data) in enumerate(curves.items()):
        for col, (metric, title) in enumerate(metrics):
            ax = axes[row][col]
            if metric not in data["per_seed"]:
                ax.set_axis_off()
                continue
            for values in data["per_seed"][metric]:
                ax.plot(data["step"], values, color=colors[method], lw=0.7, alpha=0.35)
            ax.plot(data["step"], data[metric], color=colors[method], lw=1.8)
            ax.set_title(f"{method_label(method)}: {title}", fontsize=8.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if row == len(curves) - 1:
                ax.set_xlabel("optimizer step")
    return png_bytes(fig)


def curves_section(sweep: Sweep) -> tuple[Section, dict]:
    section = Section("curves", "Training curves of the best configurations")
    curves = {}
    for method, configs in sweep.evidence.by_method.items():
        data = curve_data(best_run(configs))
        if data is not None:
            curves[method] = data
    if not curves:
        section.blocks.append("No training logs: the runs' directories hold no metrics.jsonl (a sweep from an "
                              "earlier version, or runs trained elsewhere).")
        return section, {}
    drawn = "; ".join(f"{method_label(m)} {d['configuration']} ({len(d['runs'])} seed{'s' * (len(d['runs']) > 1)})"
                      for m, d in curves.items())
    section.blocks += [
        "The loss and the reward margin each logged optimizer step (metrics.jsonl: means over the steps' "
        "micro-batches) for each method's best configuration (section 1): the mean over its seeds as the thick "
        "line, each seed as a thin one. The margin is the chosen-minus-rejected log-ratio to the reference "
        "(SimPO: of per-token log-probabilities); VAR's weight entropy is that of its micro-batch's weights "
        "normalised to sum to one: log of the responses it weighs when they weigh alike, 0 when one takes all.",
        Plot("training_curves.png", curves_figure(curves, sweep.colors), "Training curves",
             f"Loss, reward margin and (VAR) weight entropy against the optimizer step: {drawn}.")]
    return section, {m: {k: v for k, v in d.items() if k != "per_seed"} for m, d in curves.items()}
