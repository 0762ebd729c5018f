"""Optimizer presets and the conditional (define-by-run) search space Optuna samples.

Each optimizer has a preset: its torch class, which hyperparameters it takes, and a literature-based range for
each. A study file may fix or narrow any of them per optimizer. Only the chosen optimizer's hyperparameters are
suggested in a trial.

This module imports neither torch nor optuna at import time: the CLI validates study files without them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import optuna

Scale = Literal["log", "log1m"]
"""``log``: log-uniform on the value; ``log1m``: log-uniform on ``1 - value`` (momentum, betas, alpha)."""


@dataclass(frozen=True)
class Range:
    """A closed interval of a hyperparameter, in the user's terms (``beta2`` in [0.9, 0.9999])."""

    low: float
    high: float
    scale: Scale = "log"

    def sampled_interval(self) -> tuple[float, float]:
        """The interval Optuna samples: the value itself, or ``1 - value`` for ``log1m``."""
        if self.scale == "log1m":
            return 1.0 - self.high, 1.0 - self.low
        return self.low, self.high


@dataclass(frozen=True)
class OptimizerPreset:
    """What lrsearch knows about one optimizer choice."""

    name: str
    torch_class: str
    hyperparameters: dict[str, Range]
    torch_fixed: dict[str, Any] = field(default_factory=dict)
    """Constructor arguments that define the choice itself (``nesterov=True``), never searched."""
    weight_decay_can_be_zero: bool = True
    """Sample ``weight_decay`` as "off (0) or log-uniform in the range": a decay of exactly 0 stays reachable."""
    source: str = ""
    defaults: dict[str, float] = field(default_factory=dict)
    """Values the grid sampler uses for everything but lr (torch's defaults; momentum 0.9)."""
    textbook_lr: float = 1e-3
    """The lr the literature starts from: the centre of the default search's prior (:mod:`lrsearch.config.priors`)."""


_WD_L2 = Range(1e-6, 1e-2)
_WD_DECOUPLED = Range(1e-5, 1e-1)
_MOMENTUM = Range(0.5, 0.999, "log1m")
_EPS = Range(1e-10, 1e-3)
_ADAM_FAMILY = {
    "lr": Range(1e-5, 1e-1),
    "beta1": Range(0.5, 0.99, "log1m"),
    "beta2": Range(0.9, 0.9999, "log1m"),
    "eps": _EPS,
}
_ADAM_DEFAULTS = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}

PRESETS: dict[str, OptimizerPreset] = {
    p.name: p
    for p in [
        OptimizerPreset(
            "sgd", "SGD", {"lr": Range(1e-4, 1.0), "weight_decay": _WD_L2},
            source="Bengio 2012, Practical recommendations (lr below 1, searched on a log scale)",
            defaults={"weight_decay": 0.0}, textbook_lr=0.1,
        ),
        OptimizerPreset(
            "momentum", "SGD", {"lr": Range(1e-4, 1.0), "momentum": _MOMENTUM, "weight_decay": _WD_L2},
            source="Sutskever et al. 2013; 1-momentum on a log scale as in Choi et al. 2019",
            defaults={"momentum": 0.9, "weight_decay": 0.0}, textbook_lr=0.1,
        ),
        OptimizerPreset(
            "nesterov", "SGD", {"lr": Range(1e-4, 1.0), "momentum": _MOMENTUM, "weight_decay": _WD_L2},
            torch_fixed={"nesterov": True},
            source="Sutskever et al. 2013; Choi et al. 2019",
            defaults={"momentum": 0.9, "weight_decay": 0.0}, textbook_lr=0.1,
        ),
        OptimizerPreset(
            "rmsprop", "RMSprop",
            {"lr": Range(1e-5, 1e-1), "alpha": Range(0.9, 0.999, "log1m"), "eps": _EPS, "weight_decay": _WD_L2},
            source="Hinton 2012, lecture 6e (alpha 0.9-0.99); Choi et al. 2019 (eps searched)",
            defaults={"alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0},
        ),
        OptimizerPreset(
            "adam", "Adam", {**_ADAM_FAMILY, "weight_decay": _WD_L2},
            source="Kingma & Ba 2015 (defaults 1e-3, 0.9, 0.999, 1e-8); Choi et al. 2019 (1-beta log-scale ranges)",
            defaults=_ADAM_DEFAULTS,
        ),
        OptimizerPreset(
            "adamw", "AdamW", {**_ADAM_FAMILY, "weight_decay": _WD_DECOUPLED},
            source="Loshchilov & Hutter 2019 (decoupled weight decay 1e-5..1e-1); Choi et al. 2019",
            defaults={**_ADAM_DEFAULTS, "weight_decay": 1e-2},
        ),
        OptimizerPreset(
            "nadam", "NAdam", {**_ADAM_FAMILY, "weight_decay": _WD_L2},
            source="Dozat 2016; Choi et al. 2019",
            defaults=_ADAM_DEFAULTS, textbook_lr=2e-3,
        ),
        OptimizerPreset(
            "radam", "RAdam", {**_ADAM_FAMILY, "weight_decay": _WD_L2},
            source="Liu et al. 2020; Kingma & Ba 2015 ranges",
            defaults=_ADAM_DEFAULTS,
        ),
        OptimizerPreset(
            "adagrad", "Adagrad", {"lr": Range(1e-4, 1.0), "eps": _EPS, "weight_decay": _WD_L2},
            source="Duchi et al. 2011 (default lr 1e-2)",
            defaults={"eps": 1e-10, "weight_decay": 0.0}, textbook_lr=1e-2,
        ),
    ]
}

OPTIMIZERS = tuple(PRESETS)
SCHEDULES = ("constant", "cosine", "warmup_cosine", "linear")
WARMUP_FRACTION = Range(0.01, 0.2)
"""warmup_cosine: fraction of all steps spent warming up linearly, log-uniform (Goyal et al. 2017)."""
DEFAULT_WARMUP_FRACTION = 0.05
"""warmup_cosine's warm-up where a configuration names none (the grid sampler, textbook runs, old exports)."""

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
        """The lr interval this study searches for ``optimizer`` (both ends equal when lr is fixed)."""
        lr = self.hyperparameters(optimizer)["lr"]
        return (lr.low, lr.high) if isinstance(lr, Range) else (lr, lr)

    def with_lr_ranges(self, ranges: dict[str, tuple[float, float]]) -> SearchSpace:
        """A copy whose lr intervals are replaced (used by the LR range test)."""
        overrides = {k: dict(v) for k, v in self.overrides.items()}
        for optimizer, (low, high) in ranges.items():
            overrides.setdefault(optimizer, {})["lr"] = Range(low, high)
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
        return {"optimizer": optimizer, "params": params, "schedule": self.suggest_schedule(trial)}

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
            if name == "lr":
                params[name] = log_grid(*self.lr_range(optimizer), points)[point]
            elif isinstance(spec, Range):
                params[name] = PRESETS[optimizer].defaults[name]
            else:
                params[name] = float(spec)
        schedule = trial.suggest_categorical("schedule", list(self.schedules))
        if schedule == "warmup_cosine":
            return {"optimizer": optimizer, "params": params,
                    "schedule": {"name": schedule, "warmup_fraction": DEFAULT_WARMUP_FRACTION}}
        return {"optimizer": optimizer, "params": params, "schedule": {"name": schedule}}

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


def torch_kwargs(optimizer: str, params: dict[str, float]) -> dict[str, Any]:
    """Constructor kwargs for the torch optimizer, from plain hyperparameter names.

    ``beta1``/``beta2`` become the ``betas`` pair; the preset's defining arguments (``nesterov=True``) are added.
    """
    preset = PRESETS[optimizer]
    kwargs: dict[str, Any] = {}
    for name, value in params.items():
        if name in ("beta1", "beta2"):
            continue
        kwargs[name] = value
    if "beta1" in params or "beta2" in params:
        kwargs["betas"] = [params.get("beta1", 0.9), params.get("beta2", 0.999)]
    kwargs.update(preset.torch_fixed)
    return kwargs


def params_from_kwargs(optimizer: str, kwargs: dict[str, Any]) -> dict[str, float]:
    """The plain hyperparameters (``lr``, ``beta1``, ...) that torch constructor ``kwargs`` stand for: the inverse
    of :func:`torch_kwargs`, to read a configuration back from an export.

    Example:
        >>> params_from_kwargs("adamw", {"lr": 0.002, "betas": [0.9, 0.99], "eps": 1e-08, "weight_decay": 0.01})
        {'lr': 0.002, 'beta1': 0.9, 'beta2': 0.99, 'eps': 1e-08, 'weight_decay': 0.01}
    """
    params: dict[str, float] = {}
    for name in PRESETS[optimizer].hyperparameters:
        if name in ("beta1", "beta2") and "betas" in kwargs:
            params[name] = float(kwargs["betas"][0 if name == "beta1" else 1])
        elif name in kwargs:
            params[name] = float(kwargs[name])
    return params


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
