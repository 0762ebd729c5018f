"""The study's plots as PNG files: optimization history and parameter importances from Optuna's own
matplotlib backend, and the objective against the learning rate, one colour per optimizer."""

from __future__ import annotations

import math
import os
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna


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
