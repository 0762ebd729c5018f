"""Build torch optimizers and LR schedulers from a configuration, with the fastest implementation torch offers.

A configuration is either a trial's (``{"optimizer", "params", "schedule"}``) or an export
(``{"optimizer", "torch_class", "kwargs", "schedule", "training"}``), as a dict or a path to the exported
JSON/YAML file.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrsearch.config.search_space import DEFAULT_WARMUP_FRACTION, PRESETS, SCHEDULES, torch_kwargs
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


def constructor(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The torch class name (``"AdamW"``) and its constructor kwargs, for either form of configuration."""
    name = config.get("optimizer")
    if name not in PRESETS:
        raise UsageError(f"optimizer {name!r} is not known (allowed: {', '.join(PRESETS)})")
    if "kwargs" in config:
        torch_class = str(config.get("torch_class", PRESETS[name].torch_class)).rpartition(".")[2]
        kwargs = dict(config["kwargs"])
    else:
        torch_class, kwargs = PRESETS[name].torch_class, torch_kwargs(name, config.get("params", {}))
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    return torch_class, kwargs


def create_optimizer(
    torch_class: str, kwargs: dict[str, Any], params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    implementation: str = "auto",
) -> tuple[torch.optim.Optimizer, str]:
    """Construct ``torch.optim.<torch_class>`` with the fastest implementation torch supports here.

    ``auto`` tries ``fused=True`` (one kernel per step for all parameters), then ``foreach=True`` (one kernel per
    op over a list of tensors), then the per-tensor loop. Support is asked of torch: the constructor refuses an
    implementation it cannot run for these parameters' device and dtype.

    Returns:
        The optimizer and the implementation chosen: ``fused``, ``foreach`` or ``default``.
    """
    import torch

    cls = getattr(torch.optim, torch_class)
    accepted = inspect.signature(cls).parameters
    params = list(params)
    candidates = ["fused", "foreach"] if implementation == "auto" else [implementation]
    if implementation == "auto" and _large_cpu_tensors(params):
        # On CPU a foreach op is a C++ loop over the tensors, one op at a time over all of them: it saves dispatch
        # overhead, which pays for small tensors, but streams every tensor through the cache once per op, which
        # loses to the per-tensor loop for large ones (bench/optimizer_step.py, 8 x 512x512: RMSprop 0.86x,
        # NAdam 0.82x of torch's default; 8 x 128x128: 1.30x, 1.20x).
        candidates = ["fused"]
    for impl in candidates:
        if impl == "default":
            break
        if impl not in accepted:
            continue
        try:
            return cls(params, **kwargs, **{impl: True}), impl
        except (RuntimeError, ValueError, TypeError):
            continue
    return cls(params, **kwargs), "default"


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


def build_optimizer(
    config: dict[str, Any] | str | Path, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]]
) -> torch.optim.Optimizer:
    """Build the optimizer a configuration describes, with the fastest implementation for the parameters' device.

    Args:
        config: An exported configuration (dict, or path to the ``.json``/``.yaml`` that ``lrsearch export``
            wrote) or a trial's configuration.
        params: What you would pass to the torch optimizer: ``model.parameters()`` or param groups.

    Example:
        >>> import torch, lrsearch
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = lrsearch.build_optimizer(
        ...     {"optimizer": "adamw", "kwargs": {"lr": 1e-3, "betas": [0.9, 0.99]}}, model.parameters())
        >>> type(opt).__name__
        'AdamW'
    """
    torch_class, kwargs = constructor(read_config(config))
    return create_optimizer(torch_class, kwargs, params)[0]


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
