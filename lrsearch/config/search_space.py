"""The conditional (define-by-run) search space Optuna samples, over the optimizer presets
(:mod:`lrsearch.config.presets`).

Each optimizer has a preset: its class, which hyperparameters it takes, and a literature-based range for each. A
study file may fix or narrow any of them per optimizer. Only the chosen optimizer's hyperparameters are suggested in
a trial.

This module imports neither torch nor optuna at import time: the CLI validates study files without them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lrsearch.config.presets import DEFAULT_WARMUP_FRACTION, PRESETS, WARMUP_FRACTION, Range

if TYPE_CHECKING:
    import optuna

__all__ = ["SearchSpace", "flat_params", "log_grid", "schedule_for"]

@dataclass(frozen=True)
class SearchSpace:
    """The resolved space of one study: presets with the study file's fixes and narrowings applied."""

    optimizers: tuple[str, ...]
    schedules: tuple[str, ...] = ("constant",)
    overrides: dict[str, dict[str, float | Range]] = field(default_factory=dict)
    param_names: str = "per_optimizer"
    """How Optuna's parameters are named: ``per_optimizer`` (``adam.lr``), ``shared`` (one ``lr`` for every
    optimizer) or ``relative`` (one space shared by every optimizer, lr in decades from each one's textbook lr:
    :class:`lrsearch.config.priors.RelativeSpace` samples it; :func:`lrsearch.config.priors.coordinates` picks)."""

    def hyperparameters(self, optimizer: str) -> dict[str, float | Range]:
        """The optimizer's hyperparameters: a fixed value or the range to sample."""
        preset = PRESETS[optimizer]
        out: dict[str, float | Range] = dict(preset.hyperparameters)
        for name, value in self.overrides.get(optimizer, {}).items():
            if isinstance(value, Range):
                value = Range(value.low, value.high, preset.hyperparameters[name].scale)
            out[name] = value
        return out

    def lr_range(self, optimizer: str) -> tuple[float, float]:
        """The interval of ``optimizer``'s step size (its lr; Prodigy's ``d_coef``) this study searches (both ends
        equal when it is fixed)."""
        step = self.hyperparameters(optimizer)[PRESETS[optimizer].step_size]
        return (step.low, step.high) if isinstance(step, Range) else (step, step)

    def with_lr_ranges(self, ranges: dict[str, tuple[float, float]]) -> SearchSpace:
        """A copy whose step-size intervals are replaced (used by the LR range test)."""
        overrides = {k: dict(v) for k, v in self.overrides.items()}
        for optimizer, (low, high) in ranges.items():
            overrides.setdefault(optimizer, {})[PRESETS[optimizer].step_size] = Range(low, high)
        return SearchSpace(self.optimizers, self.schedules, overrides, self.param_names)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample one configuration, define-by-run.

        Returns:
            ``{"optimizer": name, "params": {plain name: value}, "schedule": {"name": ..., ...}}``, the form that
            :func:`lrsearch.build_optimizer` and the exports take.
        """
        optimizer = trial.suggest_categorical("optimizer", list(self.optimizers))
        prefix = "" if self.param_names == "shared" else f"{optimizer}."
        params: dict[str, float] = {}
        for name, spec in self.hyperparameters(optimizer).items():
            params[name] = _suggest_one(trial, prefix + name, spec, PRESETS[optimizer].weight_decay_can_be_zero)
        return {"optimizer": optimizer, "params": params,
                "schedule": schedule_for(optimizer, self.suggest_schedule(trial))}

    def encode(self, config: dict[str, Any]) -> dict[str, Any]:
        """The Optuna parameters, as :meth:`suggest` names them, that stand for ``config`` (to enqueue it).

        Example:
            >>> SearchSpace(("sgd",)).encode({"optimizer": "sgd", "params": {"lr": 0.1, "weight_decay": 0.0},
            ...                               "schedule": {"name": "constant"}})
            {'optimizer': 'sgd', 'sgd.lr': 0.1, 'sgd.weight_decay_on': False, 'schedule': 'constant'}
        """
        name = config["optimizer"]
        prefix = "" if self.param_names == "shared" else f"{name}."
        out: dict[str, Any] = {"optimizer": name}
        for hp, spec in self.hyperparameters(name).items():
            if not isinstance(spec, Range):
                continue
            value = config["params"][hp]
            if hp == "weight_decay" and PRESETS[name].weight_decay_can_be_zero:
                out[prefix + "weight_decay_on"] = value > 0
                if value == 0:
                    continue
            if spec.scale == "log1m":
                out[f"{prefix}one_minus_{hp}"] = 1.0 - value
            elif spec.low != spec.high:
                out[prefix + hp] = value
        out["schedule"] = config["schedule"]["name"]
        if out["schedule"] not in self.schedules:  # a schedule the optimizer maps away (Schedule-Free)
            out["schedule"] = self.schedules[0]
        if config["schedule"]["name"] == "warmup_cosine":
            out["schedule.warmup_fraction"] = config["schedule"].get("warmup_fraction", DEFAULT_WARMUP_FRACTION)
        return out

    def grid(self, points: int) -> dict[str, list[Any]]:
        """The grid for Optuna's GridSampler: every optimizer x ``points`` log-spaced lrs x every schedule."""
        return {"optimizer": list(self.optimizers), "lr_point": list(range(points)), "schedule": list(self.schedules)}

    def suggest_grid(self, trial: optuna.Trial, points: int) -> dict[str, Any]:
        """Grid mode: the lr from a per-optimizer log grid; every other hyperparameter fixed or at its default.

        The grid indexes lr points rather than values because each optimizer has its own lr interval.
        """
        optimizer = trial.suggest_categorical("optimizer", list(self.optimizers))
        point = trial.suggest_int("lr_point", 0, points - 1)
        params: dict[str, float] = {}
        for name, spec in self.hyperparameters(optimizer).items():
            if name == PRESETS[optimizer].step_size:
                params[name] = log_grid(*self.lr_range(optimizer), points)[point]
            elif isinstance(spec, Range):
                params[name] = PRESETS[optimizer].defaults[name]
            else:
                params[name] = float(spec)
        schedule = {"name": trial.suggest_categorical("schedule", list(self.schedules))}
        if schedule["name"] == "warmup_cosine":
            schedule["warmup_fraction"] = DEFAULT_WARMUP_FRACTION
        return {"optimizer": optimizer, "params": params, "schedule": schedule_for(optimizer, schedule)}

    def suggest_schedule(self, trial: optuna.Trial) -> dict[str, Any]:
        name = trial.suggest_categorical("schedule", list(self.schedules))
        schedule: dict[str, Any] = {"name": name}
        if name == "warmup_cosine":
            low, high = WARMUP_FRACTION.low, WARMUP_FRACTION.high
            schedule["warmup_fraction"] = trial.suggest_float("schedule.warmup_fraction", low, high, log=True)
        return schedule


def _suggest_one(trial: optuna.Trial, key: str, spec: float | Range, decay_can_be_zero: bool) -> float:
    if not isinstance(spec, Range):
        return float(spec)
    if key.endswith("weight_decay") and decay_can_be_zero:
        # "off or log-uniform": a log scale cannot reach 0, and no decay at all is a common optimum.
        if not trial.suggest_categorical(key + "_on", [False, True]):
            return 0.0
    low, high = spec.sampled_interval()
    if spec.scale == "log1m":
        head, _, name = key.rpartition(".")
        one_minus_key = f"{head}.one_minus_{name}" if head else f"one_minus_{name}"
        one_minus = trial.suggest_float(one_minus_key, low, high, log=True)
        return 1.0 - one_minus
    if low == high:
        return low
    return trial.suggest_float(key, low, high, log=True)


def schedule_for(optimizer: str, schedule: dict[str, Any]) -> dict[str, Any]:
    """The schedule ``optimizer`` trains with: ``schedule``, or the first its preset allows where it allows only
    some (Schedule-Free has none but its own warm-up: ``constant``)."""
    allowed = PRESETS[optimizer].schedules
    return schedule if allowed is None or schedule["name"] in allowed else {"name": allowed[0]}


def flat_params(config: dict[str, Any]) -> dict[str, Any]:
    """A trial configuration in the user's plain names, one level deep: what ``show``, tracking and function mode's
    ``ctx.params`` present.

    Example:
        >>> flat_params({"optimizer": "adam", "params": {"lr": 0.001, "beta2": 0.99},
        ...              "schedule": {"name": "warmup_cosine", "warmup_fraction": 0.05}})
        {'optimizer': 'adam', 'lr': 0.001, 'beta2': 0.99, 'schedule': 'warmup_cosine', 'warmup_fraction': 0.05}
    """
    schedule = config["schedule"]
    return {"optimizer": config["optimizer"], **config["params"], "schedule": schedule["name"],
            **{name: value for name, value in schedule.items() if name != "name"}}


def log_grid(low: float, high: float, points: int) -> list[float]:
    """``points`` log-spaced values from ``low`` to ``high`` inclusive."""
    if points == 1 or low == high:
        return [math.sqrt(low * high)]
    step = (math.log(high) - math.log(low)) / (points - 1)
    return [math.exp(math.log(low) + i * step) for i in range(points)]
