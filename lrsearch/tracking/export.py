"""The winning optimizer configuration, as JSON, YAML or a runnable torch snippet."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from lrsearch.config.presets import DEFAULT_WARMUP_FRACTION
from lrsearch.errors import UsageError
from lrsearch.training.optimizers import constructor
from lrsearch.training.trial import finite

if TYPE_CHECKING:
    import optuna

FORMATS = ("json", "yaml", "python")


def trial_config(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The export of one trial: what goes into the torch constructor, the schedule, what it scored and where it came
    from. The objective is its configuration's: the mean over every seed it trained with (``objective.seeds``: each
    seed's value and trial), where the study confirmed it on new seeds, else the trial's value."""
    from lrsearch.study.confirmation import CONFIRMS_ATTR
    from lrsearch.study.results import answers

    config = trial.user_attrs.get("config")
    if config is None:
        raise UsageError(f"trial {trial.number} of study {study.study_name!r} has no recorded configuration")
    training = trial.user_attrs.get("training", {})
    steps = training.get("steps_per_epoch", 0) * training.get("epochs", 0) or None
    try:
        made = constructor(config, steps)
    except UsageError:  # a warm-up share of steps the trial never reached: the share stays in params
        made = constructor({**config, "params": {k: v for k, v in config["params"].items()
                                                 if k != "warmup_fraction"}})
    spec = study.user_attrs.get("spec", {})
    answer = answers(study).get(trial.user_attrs.get(CONFIRMS_ATTR, trial.number))
    if answer is not None:
        value, spread = finite(answer.value), finite(answer.spread)
        seeds = [{"seed": s, "value": finite(v), "trial": n}
                 for s, v, n in zip(answer.seeds, answer.values, answer.trials, strict=True)]
    else:
        value, spread = finite(trial.value), None
        seeds = [{"seed": trial.user_attrs.get("training", {}).get("seed"), "value": value, "trial": trial.number}]
    pair = {}
    if made.aux_class is not None:  # Muon: AdamW for the rest, and which parameters each updated
        pair = {"aux": {"torch_class": _qualified(made.aux_class), "kwargs": _listed(made.aux_kwargs or {})},
                "param_split": trial.user_attrs.get("param_split")}
    return {
        "optimizer": config["optimizer"],
        "torch_class": _qualified(made.torch_class),
        "kwargs": _listed(made.kwargs),
        **pair,
        "params": config["params"],
        "implementation": trial.user_attrs.get("optimizer_impl"),
        "schedule": config["schedule"],
        "precision": trial.user_attrs.get("training", {}).get("precision", "fp32"),
        "training": trial.user_attrs.get("training", {}),
        "objective": {
            "metric": spec.get("objective", {}).get("metric", "val_loss"),
            "direction": study.direction.name.lower(),
            "value": value,
            "spread": spread,
            "seeds": seeds,
            "at": spec.get("objective", {}).get("at", "last"),
            "epoch": trial.user_attrs.get("objective_epoch"),
        },
        "metrics": {k: trial.user_attrs[k] for k in trial.user_attrs if k == "train_loss" or k.startswith("val_")},
        "source": {
            "study": study.study_name,
            "trial": trial.number,
            "state": trial.state.name,
            "mlflow_run_id": trial.user_attrs.get("mlflow_run_id"),
        },
    }


def _qualified(torch_class: str) -> str:
    return torch_class if "." in torch_class else f"torch.optim.{torch_class}"


def _listed(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Kwargs as JSON holds them (betas as a list)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}


def render(config: dict[str, Any], fmt: str) -> str:
    """The configuration as ``json``, ``yaml`` or a ``python`` snippet that builds it with plain torch."""
    if fmt == "json":
        return json.dumps(config, indent=2) + "\n"
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(config, sort_keys=False)
    if fmt == "python":
        return python_snippet(config)
    raise UsageError(f"export format {fmt!r} is not known (allowed: {', '.join(FORMATS)})")


def python_snippet(config: dict[str, Any]) -> str:
    """Plain torch code for the optimizer(s) and scheduler(s), with the training step and the mode switches as the
    trial ran them: no lrsearch needed to use the result."""
    training = config.get("training", {})
    source = config.get("source", {})
    lines = [
        f"# {config['optimizer']} from lrsearch study {source.get('study')!r}, trial {source.get('trial')} "
        f"({config['objective']['metric']} = {config['objective']['value']})",
        "import math",
        "",
        "import torch",
        *sorted({f"import {path.rpartition('.')[0]}" for path in _classes(config) if not path.startswith("torch.")}),
        "",
        "model = torch.nn.Linear(4, 2)  # your model",
        f"batch_size = {training.get('batch_size', 64)}",
        f"epochs = {training.get('epochs', 1)}",
        f"steps_per_epoch = {training.get('steps_per_epoch', 100)}  # len(train_loader): the schedule steps once per "
        "optimizer step",
    ]
    if "aux" in config:
        split = config.get("param_split") or {}
        lines += [
            "# Muon updates the hidden 2-D weights the trial gave it; AdamW the rest (step, zero_grad both)",
            f"hidden = {sorted(split.get('muon', []))!r}",
            "named = dict(model.named_parameters())",
            f"muon = {config['torch_class']}([named[n] for n in hidden], {_kwargs(config['kwargs'])})",
            f"adamw = {config['aux']['torch_class']}([p for n, p in named.items() if n not in hidden], "
            f"{_kwargs(config['aux']['kwargs'])})",
            "optimizers = [muon, adamw]",
        ]
    else:
        lines += [f"optimizer = {config['torch_class']}(model.parameters(), {_kwargs(config['kwargs'])})",
                  "optimizers = [optimizer]"]
    lines += _schedule_lines(config.get("schedule") or {"name": "constant"})
    if _has_modes(config):
        lines += ["# Schedule-Free: train mode to step, eval mode (its averaged weights) to evaluate or save",
                  "for opt in optimizers:", "    opt.train()",
                  "# before evaluating or saving: model.eval(); [opt.eval() for opt in optimizers]",
                  "# before training again:       model.train(); [opt.train() for opt in optimizers]"]
    lines += _precision_lines(config.get("precision", "fp32"), str(training.get("device", "cuda")))
    return "\n".join(lines) + "\n"


def _classes(config: dict[str, Any]) -> list[str]:
    return [config["torch_class"], *([config["aux"]["torch_class"]] if "aux" in config else [])]


def _has_modes(config: dict[str, Any]) -> bool:
    from lrsearch.config.presets import PRESETS

    preset = PRESETS.get(config["optimizer"])
    return bool(preset and preset.modes)


def _kwargs(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_literal(v)}" for k, v in kwargs.items())


def _schedule_lines(schedule: dict[str, Any]) -> list[str]:
    """One torch scheduler per optimizer, as the trial stepped it."""
    total = "steps_per_epoch * epochs"
    name = schedule["name"]
    if name == "constant":
        return ["schedulers = []"]
    if name == "cosine":
        make = f"torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max={total})"
        return [f"schedulers = [{make} for opt in optimizers]"]
    if name == "linear":
        make = f"torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=0.0, total_iters={total})"
        return [f"schedulers = [{make} for opt in optimizers]"]
    fraction = schedule.get("warmup_fraction", DEFAULT_WARMUP_FRACTION)
    return [
        f"warmup = max(1, math.ceil({fraction!r} * {total}))",
        "schedulers = [torch.optim.lr_scheduler.SequentialLR(opt, [",
        "    torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / warmup, total_iters=warmup),",
        f"    torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, {total} - warmup)),",
        "], milestones=[warmup]) for opt in optimizers]",
    ]


def _precision_lines(precision: str, device: str) -> list[str]:
    """The training step as the trial ran it: plain for fp32, under autocast for bf16, scaled too for fp16; every
    optimizer and scheduler stepped once per batch."""
    lines = [""]
    if precision == "fp32":
        lines += ["# in the training loop:", "#     loss = loss_fn(model(inputs), targets)"]
    else:
        device_type = device.partition(":")[0]
        dtype = {"bf16": "bfloat16", "fp16": "float16"}[precision]
        lines += [f"# mixed precision {precision}, as the trial trained: forward and loss under autocast"]
        if precision == "fp16":
            lines += [f"scaler = torch.amp.GradScaler({device_type!r})  # fp16 gradients need loss scaling"]
        lines += ["# in the training loop:", f"#     with torch.autocast({device_type!r}, dtype=torch.{dtype}):",
                  "#         loss = loss_fn(model(inputs), targets)"]
    lines += ["#     for opt in optimizers: opt.zero_grad()"]
    if precision == "fp16":
        lines += ["#     scaler.scale(loss).backward()", "#     for opt in optimizers: scaler.step(opt)",
                  "#     scaler.update()"]
    else:
        lines += ["#     loss.backward()", "#     for opt in optimizers: opt.step()"]
    return [*lines, "#     for scheduler in schedulers: scheduler.step()"]


def _literal(value: Any) -> str:
    if isinstance(value, list):
        return "(" + ", ".join(repr(v) for v in value) + ")"
    return repr(value)
