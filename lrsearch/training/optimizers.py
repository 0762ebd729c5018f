"""Build torch optimizers and LR schedulers from a configuration, with the fastest implementation torch offers.

A configuration is either a trial's (``{"optimizer", "params", "schedule"}``) or an export
(``{"optimizer", "torch_class", "kwargs", "schedule", "training"}``), as a dict or a path to the exported
JSON/YAML file.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrsearch.config.presets import DEFAULT_WARMUP_FRACTION, PRESETS, SCHEDULES, aux_kwargs, torch_kwargs
from lrsearch.errors import UsageError, first_line

if TYPE_CHECKING:
    import torch

def read_config(config: dict[str, Any] | str | Path) -> dict[str, Any]:
    """A configuration as a dict, reading an exported ``.json`` or ``.yaml`` file when given a path."""
    if isinstance(config, dict):
        return config
    path = Path(config)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read optimizer config {str(path)!r}: {exc.strerror}") from None
    import yaml

    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise UsageError(f"optimizer config {str(path)!r} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}"
                         f" ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise UsageError(f"optimizer config {str(path)!r} is not a mapping (got {type(data).__name__})")
    return data


@dataclass
class Construction:
    """What a configuration builds: the class and kwargs of its optimizer, and for one that updates the hidden
    weights only (Muon), AdamW's for the rest and, from an export, the recorded split of the parameters."""

    optimizer: str
    """The preset's name."""
    torch_class: str
    kwargs: dict[str, Any]
    aux_class: str | None = None
    aux_kwargs: dict[str, Any] | None = None
    split: dict[str, list[str]] | None = None


def constructor(config: dict[str, Any], total_steps: int | None = None) -> Construction:
    """The class (``"AdamW"``, ``"schedulefree.AdamWScheduleFree"``) and constructor kwargs, for either form of
    configuration; ``total_steps`` (the training's optimizer steps) turns a warm-up share into steps.

    Raises:
        UsageError: an unknown optimizer, or a warm-up share without the number of steps.
    """
    name = config.get("optimizer")
    if name not in PRESETS:
        raise UsageError(f"optimizer {name!r} is not known (allowed: {', '.join(PRESETS)})")
    preset = PRESETS[name]
    aux_class = aux = None
    if "kwargs" in config:
        torch_class = str(config.get("torch_class", preset.qualified_class)).removeprefix("torch.optim.")
        kwargs = dict(config["kwargs"])
        if "aux" in config:
            aux_class = str(config["aux"]["torch_class"]).removeprefix("torch.optim.")
            aux = dict(config["aux"]["kwargs"])
    else:
        params = config.get("params", {})
        try:
            kwargs = torch_kwargs(name, params, total_steps)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        torch_class = preset.torch_class
        if preset.hidden_only:
            aux_class, aux = "AdamW", aux_kwargs(name, params)
    for part in (kwargs, aux or {}):
        if "betas" in part:
            part["betas"] = tuple(part["betas"])
    return Construction(name, torch_class, kwargs, aux_class, aux, config.get("param_split"))


def optimizer_class(torch_class: str) -> type:
    """The class a configuration names: ``"AdamW"`` is ``torch.optim.AdamW``, a dotted path is imported.

    Raises:
        UsageError: one line naming what to install (the optimizers extra, a newer torch).
    """
    import importlib

    import torch

    module_name, _, class_name = torch_class.rpartition(".")
    if not module_name:
        found = getattr(torch.optim, class_name, None)
        if found is None:
            raise UsageError(f"torch.optim.{class_name} is not in torch {torch.__version__}: "
                             f"{_requirement(torch_class) or 'update torch'}")
        return found
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise UsageError(_requirement(torch_class) or f"cannot import {torch_class}") from None


def _requirement(torch_class: str) -> str | None:
    for preset in PRESETS.values():
        if preset.torch_class == torch_class:
            return preset.problem()
    return None


def create_optimizer(
    torch_class: str, kwargs: dict[str, Any], params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    implementation: str = "auto",
) -> tuple[torch.optim.Optimizer, str]:
    """Construct ``torch_class`` (:func:`optimizer_class`) with the fastest implementation it supports here.

    ``auto`` tries ``fused=True`` (one kernel per step for all parameters), then ``foreach=True`` (one kernel per
    op over a list of tensors), then the per-tensor loop. Support is asked of the class: its constructor refuses an
    implementation it cannot run for these parameters' device and dtype. A keyword the class does not name is
    refused here (some packages' classes would silently keep a misspelled one).

    Returns:
        The optimizer and the implementation chosen: ``fused``, ``foreach`` or ``default``.
    """
    cls = optimizer_class(torch_class)
    accepted = inspect.signature(cls).parameters
    named = {n for n, p in accepted.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    unknown = sorted(set(kwargs) - named)
    if unknown:
        raise UsageError(f"{torch_class} takes no argument {unknown[0]!r} (it takes: {', '.join(sorted(named))})")
    params = list(params)
    candidates = ["fused", "foreach"] if implementation == "auto" else [implementation]
    if implementation == "auto" and _large_cpu_tensors(params):
        # On CPU a foreach op is a C++ loop over the tensors, one op at a time over all of them: it saves dispatch
        # overhead, which pays for small tensors, but streams every tensor through the cache once per op, which
        # loses to the per-tensor loop for large ones (bench/optimizer_step.py, 8 x 512x512: RMSprop 0.86x,
        # NAdam 0.82x of torch's default; 8 x 128x128: 1.30x, 1.20x).
        candidates = ["fused"]
    # Some packages print as they construct (Prodigy: "Using decoupled weight decay"): not the user's terminal's.
    with contextlib.redirect_stdout(io.StringIO()):
        for impl in candidates:
            if impl == "default":
                break
            if impl not in named:
                continue
            try:
                return cls(params, **kwargs, **{impl: True}), impl
            except (RuntimeError, ValueError, TypeError):
                continue
        # The per-tensor loop, said outright: some classes (Lion's) take foreach=None to mean foreach on any device.
        return cls(params, **kwargs, **({"foreach": False} if "foreach" in named else {})), "default"


@dataclass
class BuiltOptimizer:
    optimizer: torch.optim.Optimizer
    implementation: str
    """``fused``, ``foreach``, ``default``; for a pair, each part's (``muon:default+adamw:fused``)."""
    param_split: dict[str, list[str]] | None = None
    """Which parameters each part updates, by name (Muon and AdamW)."""


def build(config: dict[str, Any], params: Any, total_steps: int | None = None,
          hidden_weights: Iterable[str] | Callable[[torch.nn.Module], Iterable[str]] | None = None) -> BuiltOptimizer:
    """The optimizer a configuration describes over ``params`` (a model, its ``named_parameters()``, or tensors
    and param groups), in train mode where it has modes.

    A hidden-weights-only optimizer (Muon) gets the model's hidden 2-D weights (``hidden_weights``, else a recorded
    split, else the split rule of :mod:`lrsearch.training.split`) and AdamW the rest, as one
    :class:`~lrsearch.training.split.CombinedOptimizer`.
    """
    import torch

    from lrsearch.training.split import CombinedOptimizer, split_parameters

    made = constructor(config, total_steps)
    preset = PRESETS[made.optimizer]
    if preset.hidden_only:
        chosen = made.split["muon"] if made.split else hidden_weights
        split, hidden, rest = split_parameters(params, chosen, made.optimizer)
        parts, implementations = {}, []
        for part, (cls, kwargs, tensors) in {"muon": (made.torch_class, made.kwargs, hidden),
                                             "adamw": (made.aux_class, made.aux_kwargs, rest)}.items():
            if tensors:
                parts[part], impl = create_optimizer(cls, kwargs, tensors)
                implementations.append(f"{part}:{impl}")
        optimizer: torch.optim.Optimizer = CombinedOptimizer(parts)
        built = BuiltOptimizer(optimizer, "+".join(implementations), split)
    else:
        if isinstance(params, torch.nn.Module):
            params = params.parameters()
        params = [p[1] if isinstance(p, tuple) else p for p in params]  # named parameters: the tensors
        optimizer, implementation = create_optimizer(made.torch_class, made.kwargs, params)
        built = BuiltOptimizer(optimizer, implementation)
    set_mode(built.optimizer, training=True)
    return built


def set_mode(optimizer: torch.optim.Optimizer, training: bool) -> None:
    """Train or eval mode, for an optimizer that has modes (Schedule-Free evaluates at its averaged weights, and
    refuses to step until told to train); a no-op for any other."""
    switch = getattr(optimizer, "train" if training else "eval", None)
    if callable(switch):
        switch()


FOREACH_CPU_MAX_MEAN_NUMEL = 32_768
"""Above this mean tensor size, foreach on CPU is slower than torch's per-tensor loop (measured between 8K and 131K)."""


def _large_cpu_tensors(params: list[Any]) -> bool:
    """Whether every parameter lives on the CPU and their mean size exceeds ``FOREACH_CPU_MAX_MEAN_NUMEL``; False
    when unsure (a param group holding a one-shot iterable is not consumed)."""
    import torch

    tensors: list[torch.Tensor] = []
    for p in params:
        group = p["params"] if isinstance(p, dict) else p
        if isinstance(group, torch.Tensor):
            tensors.append(group)
        elif isinstance(group, (list, tuple)):
            tensors.extend(group)
        else:
            return False
    if not tensors or any(t.device.type != "cpu" for t in tensors):
        return False
    return sum(t.numel() for t in tensors) / len(tensors) > FOREACH_CPU_MAX_MEAN_NUMEL


def build_optimizer(config: dict[str, Any] | str | Path, params: Any) -> torch.optim.Optimizer:
    """Build the optimizer a configuration describes, with the fastest implementation for the parameters' device.

    Args:
        config: An exported configuration (dict, or path to the ``.json``/``.yaml`` that ``lrsearch export``
            wrote) or a trial's configuration.
        params: What you would pass to the torch optimizer: ``model.parameters()`` or param groups. For Muon, the
            model (or ``model.named_parameters()``): the export's recorded split of its parameters is rebuilt, and
            Muon and AdamW come back as one optimizer to step.

    A Schedule-Free optimizer comes back in train mode: call ``optimizer.eval()`` before evaluating or saving, and
    ``optimizer.train()`` before training again. A warm-up share is turned into steps with the export's
    ``training.steps_per_epoch`` and ``training.epochs``.

    Example:
        >>> import torch, lrsearch
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = lrsearch.build_optimizer(
        ...     {"optimizer": "adamw", "kwargs": {"lr": 1e-3, "betas": [0.9, 0.99]}}, model.parameters())
        >>> type(opt).__name__
        'AdamW'
    """
    config = read_config(config)
    training = config.get("training", {})
    steps = training.get("steps_per_epoch", 0) * training.get("epochs", 0) or None
    return build(config, params, steps).optimizer


def build_scheduler(
    config: dict[str, Any] | str | Path, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
    epochs: int | None = None,
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The LR scheduler a configuration describes, stepped once per optimizer step; ``None`` for ``constant``.

    ``epochs`` defaults to the configuration's ``training.epochs``.
    """
    config = read_config(config)
    schedule = config.get("schedule") or {"name": "constant"}
    epochs = epochs if epochs is not None else config.get("training", {}).get("epochs")
    if schedule["name"] != "constant" and epochs is None:
        raise UsageError(f"schedule {schedule['name']!r} needs the number of epochs (training.epochs)")
    return make_scheduler(schedule, optimizer, steps_per_epoch * (epochs or 1))


def make_scheduler(
    schedule: dict[str, Any], optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Schedules are built from torch's own schedulers, so an exported one is plain torch code."""
    from torch.optim import lr_scheduler

    name = schedule["name"]
    if name == "constant":
        return None
    if name == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if name == "linear":
        return lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=total_steps)
    if name == "warmup_cosine":
        warmup = warmup_steps(schedule, total_steps)
        return lr_scheduler.SequentialLR(
            optimizer,
            [lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warmup, total_iters=warmup),
             lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup))],
            milestones=[warmup],
        )
    raise UsageError(f"schedule {name!r} is not known (allowed: {', '.join(SCHEDULES)})")


def warmup_steps(schedule: dict[str, Any], total_steps: int) -> int:
    return max(1, math.ceil(schedule.get("warmup_fraction", DEFAULT_WARMUP_FRACTION) * total_steps))
