"""Plots as PNG files: a study's optimization history and parameter importances from Optuna's own matplotlib
backend and its objective against the learning rate, one colour per optimizer; and the LR range test's curves."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

    from lrsearch.training.lr_finder import LRFindResult


def study_figures(study: optuna.Study, directory: str) -> dict[str, str]:
    """Write every plot that the study's trials allow; returns ``{name: path}``."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window, work without a display
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    paths: dict[str, str] = {}
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    makers = {
        "optimization_history": lambda: optuna_plots.plot_optimization_history(study).figure,
        "objective_vs_lr": lambda: objective_vs_lr(study),
    }
    if len(complete) >= 2:
        makers["param_importances"] = lambda: optuna_plots.plot_param_importances(study).figure
    for name, make in makers.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's matplotlib backend is experimental and says so
            try:
                figure = make()
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # e.g. importances with a single distinct parameter value
        path = os.path.join(directory, f"{name}.png")
        figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(figure)
        paths[name] = path
    return paths


def objective_vs_lr(study: optuna.Study):  # -> matplotlib.figure.Figure
    """Final objective of every complete or pruned trial against its lr (log scale), coloured by optimizer."""
    import matplotlib.pyplot as plt
    import optuna

    figure, axes = plt.subplots(figsize=(7, 4.5))
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    by_optimizer: dict[str, list[tuple[float, float, bool]]] = {}
    for trial in study.get_trials(deepcopy=False, states=states):
        config = trial.user_attrs.get("config")
        if config is None or trial.value is None or not math.isfinite(trial.value):
            continue
        point = (config["params"]["lr"], trial.value, trial.state == optuna.trial.TrialState.COMPLETE)
        by_optimizer.setdefault(config["optimizer"], []).append(point)
    for index, (optimizer, points) in enumerate(sorted(by_optimizer.items())):
        colour = f"C{index % 10}"
        done = [(lr, v) for lr, v, complete in points if complete]
        pruned = [(lr, v) for lr, v, complete in points if not complete]
        if done:
            axes.scatter(*zip(*done, strict=True), color=colour, label=optimizer, s=30)
        if pruned:
            axes.scatter(*zip(*pruned, strict=True), color=colour, marker="x", s=25, alpha=0.6,
                         label=f"{optimizer} (pruned)")
    metric = study.user_attrs.get("spec", {}).get("objective", {}).get("metric", "objective")
    axes.set(xscale="log", xlabel="learning rate", ylabel=metric, title=f"{study.study_name}: {metric} vs lr")
    if by_optimizer:
        axes.legend(fontsize="small", ncol=2)
    axes.grid(True, which="both", alpha=0.3)
    return figure


def plot_lr_find(results: dict[str, LRFindResult], path: str | Path) -> Path:
    """Write a PNG of smoothed loss against lr (log axis): one curve per optimizer, its suggestion marked.

    Uses matplotlib's object API with the Agg canvas, so it needs no display and leaves pyplot's global backend
    alone.

    Example:
        >>> plot_lr_find(lr_find("studies/digits-mlp.yaml"), "lr_find.png")  # doctest: +SKIP
        PosixPath('lr_find.png')
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    tops, bottoms = [], []
    for index, (name, result) in enumerate(results.items()):
        points = [(lr, v) for lr, v in zip(result.lrs, result.losses, strict=True) if math.isfinite(v)]
        if not points:
            continue
        lrs, losses = np.array(points).T
        color = f"C{index % 10}"
        axes.plot(lrs, losses, color=color, linewidth=1.6,
                  label=f"{name}: suggested {result.suggested_lr:.2g} ({result.rule})")
        at = float(np.interp(np.log10(result.suggested_lr), np.log10(lrs), losses))
        axes.plot([result.suggested_lr], [at], "o", color=color, markersize=8, markeredgecolor="black")
        if result.diverged_at is not None:
            axes.axvline(result.diverged_at, color=color, linestyle=":", linewidth=1)
        tops.append(losses[0])
        bottoms.append(losses.min())
    if tops:
        # Clip the blow-up tail (up to 4x the best loss) so the descent, the part that matters, fills the plot.
        top, bottom = max(tops), min(bottoms)
        margin = 0.08 * (top - bottom) or 0.1 * abs(top) or 1.0
        axes.set_ylim(bottom - margin, top + 3 * margin)
    axes.set(xscale="log", xlabel="learning rate", ylabel="smoothed training loss",
             title="LR range test (dots: suggestions; dotted lines: divergence)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path := Path(path), format="png")
    return path
