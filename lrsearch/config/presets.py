"""The optimizer catalogue: one preset per optimizer choice, with its class, the hyperparameters searched, their
literature ranges (with sources), its textbook point, and what it needs to run.

The 2018 choices (SGD to Adagrad) are torch's own classes. The newer ones come from torch where torch has them
(``muon``: torch >= 2.9; ``adafactor``: torch >= 2.5), else from the authors' own package (``schedulefree``,
``prodigyopt``) or from ``pytorch-optimizer`` (``lion``, ``soap``): those three are the ``lrsearch[optimizers]``
extra. :meth:`OptimizerPreset.problem` says, in one line, what a missing one needs; it reads package metadata only,
so study files are checked without importing torch.

This module imports neither torch nor optuna.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["CLASSIC", "DEFAULT_WARMUP_FRACTION", "OPTIMIZERS", "PRESETS", "SCHEDULES", "WARMUP_FRACTION",
           "OptimizerPreset", "Range", "Requirement", "aux_kwargs", "params_from_kwargs", "torch_kwargs"]

Scale = Literal["log", "log1m"]
"""``log``: log-uniform on the value; ``log1m``: log-uniform on ``1 - value`` (momentum, betas, alpha)."""
EXTRA = "pip install 'lrsearch[optimizers]'"


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
class Requirement:
    """What an optimizer needs beyond lrsearch's own dependencies: a torch version, or a module of the
    ``lrsearch[optimizers]`` extra."""

    torch: str | None = None
    """The first torch release that has the class (``"2.9"``)."""
    module: str | None = None
    """The module of the extra that provides it (``"schedulefree"``)."""

    def problem(self, name: str) -> str | None:
        """Why ``name`` cannot run here, in one line naming what to install; None when it can."""
        if self.module is not None and importlib.util.find_spec(self.module) is None:
            return f"{name!r} needs the optimizers extra ({self.module} is not installed): {EXTRA}"
        if self.torch is not None:
            installed = _torch_version()
            if installed is not None and installed < _release(self.torch):
                return (f"{name!r} needs torch >= {self.torch} (this is torch "
                        f"{'.'.join(map(str, installed))}): pip install 'torch>={self.torch}'")
        return None


def _release(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


def _torch_version() -> tuple[int, ...] | None:
    try:
        return _release(importlib.metadata.version("torch"))
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class OptimizerPreset:
    """What lrsearch knows about one optimizer choice."""

    name: str
    torch_class: str
    """The class: a name in ``torch.optim`` (``"AdamW"``), else its dotted path (``"schedulefree.SGDScheduleFree"``)."""
    hyperparameters: dict[str, Range]
    torch_fixed: dict[str, Any] = field(default_factory=dict)
    """Constructor arguments that define the choice itself (``nesterov=True``), never searched."""
    weight_decay_can_be_zero: bool = True
    """Sample ``weight_decay`` as "off (0) or log-uniform in the range": a decay of exactly 0 stays reachable."""
    source: str = ""
    defaults: dict[str, float] = field(default_factory=dict)
    """The textbook values of everything but the step size (the grid sampler's values; the prior's centre)."""
    textbook_lr: float = 1e-3
    """The step size the literature starts from (its lr; for Prodigy its ``d_coef``): the centre of the default
    search's prior (:mod:`lrsearch.config.priors`)."""
    step_size: str = "lr"
    """The hyperparameter that sets the step size, which the relative space's ``lr_scale`` moves: ``lr``, or
    ``d_coef`` for a learning-rate-free optimizer whose lr stays 1."""
    requires: Requirement = field(default_factory=Requirement)
    schedules: tuple[str, ...] | None = None
    """The lr schedules it may have (None: any). Another schedule drawn for it is mapped to the first of these:
    Schedule-Free replaces the decay schedule by its own averaging (``warmup_fraction`` is its warm-up)."""
    modes: bool = False
    """``optimizer.train()`` / ``optimizer.eval()`` around evaluation (Schedule-Free evaluates at its average)."""
    hidden_only: bool = False
    """It updates only the 2-D weights of hidden layers (Muon); AdamW (``aux_*`` hyperparameters) the rest."""
    stackable: bool = True
    """Whether ``--batch-trials`` can train it: members are stacked as one flat row each, so only updates that act
    elementwise (or on whole-model sums) give what the sequential trial gives."""
    not_stackable_because: str = ""

    def problem(self) -> str | None:
        """Why this optimizer cannot run here (a missing extra, an old torch), else None."""
        return self.requires.problem(self.name)

    @property
    def class_path(self) -> tuple[str, str]:
        """``(module, class name)``: ``("torch.optim", "AdamW")``."""
        module, _, name = self.torch_class.rpartition(".")
        return module or "torch.optim", name

    @property
    def qualified_class(self) -> str:
        return ".".join(self.class_path)


_WD_L2 = Range(1e-6, 1e-2)
_WD_DECOUPLED = Range(1e-5, 1e-1)
_MOMENTUM = Range(0.5, 0.999, "log1m")
_EPS = Range(1e-10, 1e-3)
_BETA1 = Range(0.5, 0.99, "log1m")
_BETA2 = Range(0.9, 0.9999, "log1m")
_ADAM_FAMILY = {"lr": Range(1e-5, 1e-1), "beta1": _BETA1, "beta2": _BETA2, "eps": _EPS}
_ADAM_DEFAULTS = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}
WARMUP_FRACTION = Range(0.01, 0.2)
"""A warm-up's share of all steps, log-uniform (Goyal et al. 2017): warmup_cosine's, and Schedule-Free's own."""
DEFAULT_WARMUP_FRACTION = 0.05
"""A warm-up where a configuration names none (the grid sampler, textbook runs, old exports)."""
_FLAT = "members are stacked as one flat row each"

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
        # The optimizers people weigh today (issue 22).
        OptimizerPreset(
            "muon", "Muon",
            {"lr": Range(1e-4, 1.0), "momentum": Range(0.5, 0.999, "log1m"), "weight_decay": _WD_DECOUPLED,
             "aux_lr": Range(1e-5, 1e-1), "aux_beta1": _BETA1, "aux_beta2": _BETA2},
            torch_fixed={"nesterov": True},
            source="Jordan et al. 2024 (Muon: lr 0.02, momentum 0.95, Nesterov, 5 Newton-Schulz steps, hidden 2-D "
                   "weights only); AdamW for the rest, betas (0.9, 0.95) as in Liu et al. 2025 (Moonshot)",
            defaults={"momentum": 0.95, "weight_decay": 0.0, "aux_lr": 1e-3, "aux_beta1": 0.9, "aux_beta2": 0.95},
            textbook_lr=0.02, requires=Requirement(torch="2.9"), hidden_only=True, stackable=False,
            not_stackable_because="it orthogonalises each 2-D weight matrix, and " + _FLAT,
        ),
        OptimizerPreset(
            "adafactor", "Adafactor", {"lr": Range(1e-4, 1.0), "weight_decay": _WD_DECOUPLED},
            source="Shazeer & Stern 2018 (factored second moments, decay rate -0.8); torch's Adafactor (lr 1e-2)",
            defaults={"weight_decay": 0.0}, textbook_lr=1e-2, requires=Requirement(torch="2.5"), stackable=False,
            not_stackable_because="it factors each weight matrix's second moments by rows and columns, and " + _FLAT,
        ),
        OptimizerPreset(
            "lion", "pytorch_optimizer.Lion",
            {"lr": Range(1e-6, 1e-2), "beta1": _BETA1, "beta2": _BETA2, "weight_decay": Range(1e-4, 10.0)},
            source="Chen et al. 2023 (lr 3-10x below AdamW's, decoupled weight decay 3-10x above; betas 0.9, 0.99)",
            defaults={"beta1": 0.9, "beta2": 0.99, "weight_decay": 0.1}, textbook_lr=1e-4,
            requires=Requirement(module="pytorch_optimizer"),
        ),
        OptimizerPreset(
            "soap", "pytorch_optimizer.SOAP",
            {"lr": Range(1e-5, 1e-1), "beta1": _BETA1, "beta2": Range(0.8, 0.9999, "log1m"), "eps": _EPS,
             "weight_decay": _WD_DECOUPLED},
            torch_fixed={"precondition_frequency": 10},
            source="Vyas et al. 2024 (SOAP: lr 3e-3, betas 0.95, weight decay 0.01, preconditioner every 10 steps)",
            defaults={"beta1": 0.95, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.01}, textbook_lr=3e-3,
            requires=Requirement(module="pytorch_optimizer"), stackable=False,
            not_stackable_because="it preconditions each weight matrix in its own eigenbasis, and " + _FLAT,
        ),
        OptimizerPreset(
            "schedulefree_adamw", "schedulefree.AdamWScheduleFree",
            {**_ADAM_FAMILY, "weight_decay": _WD_DECOUPLED, "warmup_fraction": WARMUP_FRACTION},
            source="Defazio et al. 2024 (The Road Less Scheduled; lr 2.5e-3, warm-up recommended, no decay "
                   "schedule); AlgoPerf 2024 self-tuning winner",
            defaults={**_ADAM_DEFAULTS, "warmup_fraction": DEFAULT_WARMUP_FRACTION}, textbook_lr=2.5e-3,
            requires=Requirement(module="schedulefree"), schedules=("constant",), modes=True,
        ),
        OptimizerPreset(
            "schedulefree_sgd", "schedulefree.SGDScheduleFree",
            {"lr": Range(1e-3, 10.0), "momentum": _MOMENTUM, "weight_decay": _WD_L2,
             "warmup_fraction": WARMUP_FRACTION},
            source="Defazio et al. 2024 (SGD-SF: lr 10-50x plain SGD's, default 1.0; momentum 0.9)",
            defaults={"momentum": 0.9, "weight_decay": 0.0, "warmup_fraction": DEFAULT_WARMUP_FRACTION},
            textbook_lr=1.0, requires=Requirement(module="schedulefree"), schedules=("constant",), modes=True,
        ),
        OptimizerPreset(
            "prodigy", "prodigyopt.Prodigy",
            {"d_coef": Range(0.1, 10.0), "beta1": _BETA1, "beta2": _BETA2, "weight_decay": _WD_DECOUPLED},
            torch_fixed={"lr": 1.0},
            source="Mishchenko & Defazio 2023 (learning-rate free: lr stays 1, d_coef scales the estimated step; "
                   "cosine annealing recommended)",
            defaults={"beta1": 0.9, "beta2": 0.999, "weight_decay": 0.0}, textbook_lr=1.0, step_size="d_coef",
            requires=Requirement(module="prodigyopt"), stackable=False,
            not_stackable_because="it estimates one step size from sums over the whole model, which a stack of "
                                  "members would share",
        ),
    ]
}

OPTIMIZERS = tuple(PRESETS)
CLASSIC = ("sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw", "nadam", "radam", "adagrad")
"""torch's own optimizers of about 2018: what a study searches when its file names none (nothing to install)."""
SCHEDULES = ("constant", "cosine", "warmup_cosine", "linear")


def torch_kwargs(optimizer: str, params: dict[str, float], total_steps: int | None = None) -> dict[str, Any]:
    """Constructor kwargs of the optimizer's class (for Muon, of its Muon part), from plain hyperparameter names.

    ``beta1``/``beta2`` become the ``betas`` pair; a warm-up share becomes ``warmup_steps`` of ``total_steps``
    (the trial's optimizer steps); the preset's defining arguments (``nesterov=True``) are added.

    Raises:
        ValueError: a warm-up share without ``total_steps``.
    """
    preset = PRESETS[optimizer]
    kwargs: dict[str, Any] = {}
    for name, value in params.items():
        if name in ("beta1", "beta2") or name.startswith("aux_"):
            continue
        if name == "warmup_fraction":
            if total_steps is None:
                raise ValueError(f"{optimizer}'s warm-up is a share of the training steps: give the number of steps")
            kwargs["warmup_steps"] = max(1, math.ceil(value * total_steps))
            continue
        kwargs[name] = value
    if "beta1" in params or "beta2" in params:
        kwargs["betas"] = [params.get("beta1", 0.9), params.get("beta2", 0.999)]
    kwargs.update(preset.torch_fixed)
    return kwargs


def aux_kwargs(optimizer: str, params: dict[str, float]) -> dict[str, Any]:
    """The AdamW kwargs of a hidden-weights-only optimizer's other parameters (Muon's ``aux_*`` hyperparameters;
    the weight decay is Muon's)."""
    defaults = PRESETS[optimizer].defaults
    return {"lr": params.get("aux_lr", defaults["aux_lr"]),
            "betas": [params.get("aux_beta1", defaults["aux_beta1"]), params.get("aux_beta2", defaults["aux_beta2"])],
            "weight_decay": params.get("weight_decay", defaults.get("weight_decay", 0.0))}


def params_from_kwargs(optimizer: str, kwargs: dict[str, Any], aux: dict[str, Any] | None = None,
                       total_steps: int | None = None) -> dict[str, float]:
    """The plain hyperparameters (``lr``, ``beta1``, ...) that torch constructor ``kwargs`` stand for: the inverse
    of :func:`torch_kwargs` (and of :func:`aux_kwargs` given ``aux``), to read a configuration back from an export.

    Example:
        >>> params_from_kwargs("adamw", {"lr": 0.002, "betas": [0.9, 0.99], "eps": 1e-08, "weight_decay": 0.01})
        {'lr': 0.002, 'beta1': 0.9, 'beta2': 0.99, 'eps': 1e-08, 'weight_decay': 0.01}
    """
    params: dict[str, float] = {}
    for name in PRESETS[optimizer].hyperparameters:
        source, key = (aux or {}, name.removeprefix("aux_")) if name.startswith("aux_") else (kwargs, name)
        if key in ("beta1", "beta2") and "betas" in source:
            params[name] = float(source["betas"][0 if key == "beta1" else 1])
        elif key == "warmup_fraction" and "warmup_steps" in source and total_steps:
            params[name] = source["warmup_steps"] / total_steps
        elif key in source:
            params[name] = float(source[key])
    return params
