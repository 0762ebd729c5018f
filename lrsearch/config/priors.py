"""What the literature knows, as the default search uses it: the textbook configurations it runs first (the
portfolio), and one search space shared by every optimizer, centred on those configurations.

**The portfolio** is what a person would try by hand before any search: Adam at 1e-3 with betas (0.9, 0.999)
(Kingma & Ba 2015), AdamW likewise with decoupled weight decay 1e-2 (Loshchilov & Hutter 2019), and SGD with
momentum 0.9 or Nesterov at lr 0.1 with cosine decay (He et al. 2016; Loshchilov & Hutter 2017). A study runs those
whose optimizer it searches, fitted to its ranges; one that searches none of them starts from its first optimizers
at their textbook lr.

**The relative space** (``search.param_names: relative``) samples every trial in the same coordinates, whatever
its optimizer, so a model of the results learns across optimizers:

- ``lr_scale``: the lr in decades from the optimizer's textbook lr (``OptimizerPreset.textbook_lr``). The shared
  scale maps piecewise-linearly onto each optimizer's own range, below and above its textbook lr, so every value of
  the scale is a distinct lr of every optimizer (no clipped plateaus);
- ``one_minus_momentum`` (SGD momentum and the Adam family's beta1), ``one_minus_beta2`` (beta2, RMSprop's alpha),
  ``eps``, ``weight_decay_on`` and ``wd_scale`` (decades around the centre of the optimizer's decay range).

A value outside an optimizer's own range is clipped to it, a hyperparameter the study fixes keeps its value, and
one the optimizer does not take is ignored: every configuration of the study's space is reachable.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from lrsearch.config.presets import DEFAULT_WARMUP_FRACTION, PRESETS, WARMUP_FRACTION, Range
from lrsearch.config.search_space import schedule_for

if TYPE_CHECKING:
    import optuna

    from lrsearch.config.search_space import SearchSpace

TEXTBOOK: dict[str, dict[str, Any]] = {
    "adam": {"optimizer": "adam", "params": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                                             "weight_decay": 0.0}, "schedule": {"name": "constant"}},
    "adamw": {"optimizer": "adamw", "params": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                                               "weight_decay": 1e-2}, "schedule": {"name": "constant"}},
    "momentum-cosine": {"optimizer": "momentum", "params": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0},
                        "schedule": {"name": "cosine"}},
    "nesterov-cosine": {"optimizer": "nesterov", "params": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0},
                        "schedule": {"name": "cosine"}},
    # The optimizers of today, each at its authors' defaults (sources in lrsearch.config.presets).
    **{name: {"optimizer": name, "params": {PRESETS[name].step_size: PRESETS[name].textbook_lr,
                                            **PRESETS[name].defaults},
              "schedule": {"name": "cosine" if name == "prodigy" else "constant"}}
       for name in ("muon", "schedulefree_adamw", "lion", "soap", "prodigy", "adafactor", "schedulefree_sgd")},
}
"""The textbook defaults a person tries by hand, by label, in the order the default search runs them first."""
PORTFOLIO_SIZE = 4
"""At most this many textbook configurations run first, in :data:`TEXTBOOK`'s order: a study of many optimizers
does not spend a third of its budget before searching."""

ONE_MINUS_MOMENTUM = (1e-3, 0.5)
ONE_MINUS_BETA2 = (1e-4, 0.1)
EPS = (1e-10, 1e-3)
WD_DECADES = (-2.0, 2.0)
AUX_LR_DECADES = (-2.0, 2.0)
"""Muon's AdamW part: its lr in decades from its textbook lr (``aux_lr_scale``)."""
COORDINATE = {"momentum": "one_minus_momentum", "beta1": "one_minus_momentum", "beta2": "one_minus_beta2",
              "alpha": "one_minus_beta2", "aux_beta1": "aux_one_minus_beta1", "aux_beta2": "one_minus_beta2",
              "eps": "eps", "warmup_fraction": "warmup", "aux_lr": "aux_lr_scale", "weight_decay": "wd_scale"}
"""The relative coordinate each hyperparameter (but the step size) is drawn in."""


def fit_to_space(config: dict[str, Any], space: SearchSpace) -> dict[str, Any] | None:
    """``config`` as the study can run it: None if the study does not search its optimizer; values clipped to the
    study's ranges, its fixed values where it fixes one, and its first schedule if it does not search this one."""
    name = config["optimizer"]
    if name not in space.optimizers:
        return None
    preset = PRESETS[name]
    params = {}
    for hp, spec in space.hyperparameters(name).items():
        value = config["params"].get(hp, preset.defaults.get(hp, preset.textbook_lr))
        if hp == "warmup_fraction" and hp not in config["params"]:
            value = DEFAULT_WARMUP_FRACTION
        if not isinstance(spec, Range):
            value = float(spec)
        elif not (hp == "weight_decay" and value == 0.0 and preset.weight_decay_can_be_zero):
            value = min(max(value, spec.low), spec.high)
        params[hp] = value
    schedule = dict(config["schedule"])
    if schedule["name"] not in space.schedules:
        schedule = {"name": space.schedules[0]}
    if schedule["name"] == "warmup_cosine":
        schedule.setdefault("warmup_fraction", DEFAULT_WARMUP_FRACTION)
    return {"optimizer": name, "params": params, "schedule": schedule_for(name, schedule)}


def portfolio(space: SearchSpace) -> dict[str, dict[str, Any]]:
    """The study's start-up portfolio by label: the first :data:`PORTFOLIO_SIZE` textbook defaults it can run, else
    its first three optimizers at their textbook lr and preset defaults."""
    configs = {label: fitted for label, config in TEXTBOOK.items() if (fitted := fit_to_space(config, space))}
    if configs:
        return dict(list(configs.items())[:PORTFOLIO_SIZE])
    return {f"{name}-textbook": fit_to_space({"optimizer": name, "params": {"lr": PRESETS[name].textbook_lr},
                                             "schedule": {"name": space.schedules[0]}}, space)
            for name in space.optimizers[:3]}


class RelativeSpace:
    """The study's space in the relative coordinates (see the module docstring)."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.own = {name: tuple(math.log10(bound / PRESETS[name].textbook_lr) for bound in space.lr_range(name))
                    for name in space.optimizers}
        """Each optimizer's step-size range (lr; Prodigy's d_coef) in decades from its textbook value."""
        self.used = {COORDINATE[hp] for name in space.optimizers for hp in PRESETS[name].hyperparameters
                     if hp in COORDINATE}
        """The coordinates an optimizer of this space draws a hyperparameter from."""
        self.lr_scale = (min(low for low, _ in self.own.values()), max(high for _, high in self.own.values()))

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """Every parameter's Optuna distribution, in sampling order; every trial samples all of them."""
        import optuna.distributions as d

        low, high = self.lr_scale
        return {
            "optimizer": d.CategoricalDistribution(list(self.space.optimizers)),
            "schedule": d.CategoricalDistribution(list(self.space.schedules)),
            "lr_scale": d.FloatDistribution(low, high),
            "one_minus_momentum": d.FloatDistribution(*ONE_MINUS_MOMENTUM, log=True),
            "one_minus_beta2": d.FloatDistribution(*ONE_MINUS_BETA2, log=True),
            "eps": d.FloatDistribution(*EPS, log=True),
            "weight_decay_on": d.CategoricalDistribution([False, True]),
            "wd_scale": d.FloatDistribution(*WD_DECADES),
            # Coordinates of today's optimizers, only where one is searched: a study of the 2018 ones samples what
            # it did before (the same draws for the same seed).
            **{name: dist for name, dist in {
                "aux_lr_scale": d.FloatDistribution(*AUX_LR_DECADES),
                "aux_one_minus_beta1": d.FloatDistribution(*ONE_MINUS_MOMENTUM, log=True),
                "warmup": d.FloatDistribution(WARMUP_FRACTION.low, WARMUP_FRACTION.high, log=True),
            }.items() if name in self.used},
        }

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample one configuration through ``trial`` (its sampler sees the relative coordinates)."""
        import optuna.distributions as d

        values = {}
        for name, dist in self.distributions().items():
            if isinstance(dist, d.CategoricalDistribution):
                values[name] = trial.suggest_categorical(name, dist.choices)
            else:
                values[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
        config = self.decode(values)
        if config["schedule"]["name"] == "warmup_cosine":
            config["schedule"]["warmup_fraction"] = trial.suggest_float(
                "schedule.warmup_fraction", WARMUP_FRACTION.low, WARMUP_FRACTION.high, log=True)
        return config

    def decode(self, values: dict[str, Any]) -> dict[str, Any]:
        """The configuration ``{"optimizer", "params", "schedule"}`` that relative ``values`` stand for."""
        name = values["optimizer"]
        preset = PRESETS[name]
        params: dict[str, float] = {}
        for hp, spec in self.space.hyperparameters(name).items():
            if not isinstance(spec, Range):
                params[hp] = float(spec)
                continue
            if hp == "weight_decay" and preset.weight_decay_can_be_zero and not values["weight_decay_on"]:
                params[hp] = 0.0
                continue
            params[hp] = min(max(self._value(name, hp, values), spec.low), spec.high)
        return {"optimizer": name, "params": params, "schedule": schedule_for(name, {"name": values["schedule"]})}

    def _value(self, name: str, hp: str, values: dict[str, Any]) -> float:
        preset = PRESETS[name]
        if hp == preset.step_size:
            return preset.textbook_lr * 10.0 ** _map(values["lr_scale"], self.lr_scale, self.own[name])
        coordinate = COORDINATE[hp]
        value = values[coordinate]
        if coordinate.startswith(("one_minus", "aux_one_minus")):
            return 1.0 - value
        if coordinate == "aux_lr_scale":
            return preset.defaults["aux_lr"] * 10.0 ** value
        if coordinate == "wd_scale":
            decay = preset.hyperparameters["weight_decay"]
            return math.sqrt(decay.low * decay.high) * 10.0 ** value
        return value

    def encode(self, config: dict[str, Any]) -> dict[str, Any]:
        """Relative values that decode to ``config`` (up to clipping); the ones it does not use at textbook values."""
        name, p = config["optimizer"], config["params"]
        preset = PRESETS[name]
        decay = p.get("weight_decay", 0.0)
        wd_range = preset.hyperparameters["weight_decay"]
        step = p.get(preset.step_size, preset.textbook_lr)
        out: dict[str, Any] = {
            "optimizer": name,
            "schedule": config["schedule"]["name"],
            "lr_scale": _clip(_map(math.log10(step / preset.textbook_lr), self.own[name], self.lr_scale),
                              self.lr_scale),
            "one_minus_momentum": _clip(1.0 - p.get("momentum", p.get("beta1", 0.9)), ONE_MINUS_MOMENTUM),
            "one_minus_beta2": _clip(1.0 - p.get("beta2", p.get("alpha", p.get("aux_beta2", 0.999))),
                                     ONE_MINUS_BETA2),
            "eps": _clip(p.get("eps", 1e-8), EPS),
            "weight_decay_on": decay > 0,
            "wd_scale": _clip(math.log10(decay / math.sqrt(wd_range.low * wd_range.high)), WD_DECADES)
            if decay > 0 else 0.0,
        }
        extra = {"aux_lr_scale": _clip(math.log10(p.get("aux_lr", 1e-3) / preset.defaults.get("aux_lr", 1e-3)),
                                       AUX_LR_DECADES),
                 "aux_one_minus_beta1": _clip(1.0 - p.get("aux_beta1", 0.9), ONE_MINUS_MOMENTUM),
                 "warmup": _clip(p.get("warmup_fraction", DEFAULT_WARMUP_FRACTION),
                                 (WARMUP_FRACTION.low, WARMUP_FRACTION.high))}
        out.update({k: v for k, v in extra.items() if k in self.used})
        if config["schedule"]["name"] == "warmup_cosine":
            out["schedule.warmup_fraction"] = config["schedule"].get("warmup_fraction", DEFAULT_WARMUP_FRACTION)
        return out


def coordinates(space: SearchSpace) -> SearchSpace | RelativeSpace:
    """What samples the study's trials and encodes configurations for it: the relative space where the study's
    ``param_names`` is ``relative``, else the space itself (per-optimizer or shared names)."""
    return RelativeSpace(space) if space.param_names == "relative" else space


def _map(x: float, source: tuple[float, float], target: tuple[float, float]) -> float:
    """Map ``x`` from ``source`` onto ``target``, 0 onto 0 where both straddle it (the textbook lr stays the
    textbook lr), linearly on each side; else one linear map of the whole interval."""
    (s_low, s_high), (t_low, t_high) = source, target
    if s_low < 0 < s_high and t_low < 0 < t_high:
        return x / s_high * t_high if x >= 0 else x / s_low * t_low
    if s_high == s_low:
        return (t_low + t_high) / 2
    return t_low + (x - s_low) / (s_high - s_low) * (t_high - t_low)


def _clip(x: float, bounds: tuple[float, float]) -> float:
    return min(max(x, bounds[0]), bounds[1])
