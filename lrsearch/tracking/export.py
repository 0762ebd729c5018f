"""The winning optimizer configuration, as JSON, YAML or a runnable torch snippet."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from lrsearch.config.search_space import DEFAULT_WARMUP_FRACTION
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
    torch_class, kwargs = constructor(config)
    if "betas" in kwargs:
        kwargs["betas"] = list(kwargs["betas"])
    spec = study.user_attrs.get("spec", {})
    answer = answers(study).get(trial.user_attrs.get(CONFIRMS_ATTR, trial.number))
    if answer is not None:
        value, spread = finite(answer.value), finite(answer.spread)
        seeds = [{"seed": s, "value": finite(v), "trial": n}
                 for s, v, n in zip(answer.seeds, answer.values, answer.trials, strict=True)]
    else:
        value, spread = finite(trial.value), None
        seeds = [{"seed": trial.user_attrs.get("training", {}).get("seed"), "value": value, "trial": trial.number}]
    return {
        "optimizer": config["optimizer"],
        "torch_class": f"torch.optim.{torch_class}",
        "kwargs": kwargs,
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
    """Plain torch code for the optimizer and scheduler: no lrsearch needed to use the result."""
    kwargs = ", ".join(f"{k}={_literal(v)}" for k, v in config["kwargs"].items())
    training = config.get("training", {})
    epochs = training.get("epochs", 1)
    source = config.get("source", {})
    lines = [
        f"# {config['optimizer']} from lrsearch study {source.get('study')!r}, trial {source.get('trial')} "
        f"({config['objective']['metric']} = {config['objective']['value']})",
        "import math",
        "",
        "import torch",
        "",
        "model = torch.nn.Linear(4, 2)  # your model",
        f"batch_size = {training.get('batch_size', 64)}",
        f"epochs = {epochs}",
        "steps_per_epoch = 100  # len(train_loader): the schedule steps once per optimizer step",
        f"optimizer = {config['torch_class']}(model.parameters(), {kwargs})",
    ]
    schedule = config.get("schedule") or {"name": "constant"}
    total = "steps_per_epoch * epochs"
    if schedule["name"] == "constant":
        lines.append("scheduler = None")
    elif schedule["name"] == "cosine":
        lines.append(f"scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max={total})")
    elif schedule["name"] == "linear":
        lines.append("scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.0, "
                     f"total_iters={total})")
    elif schedule["name"] == "warmup_cosine":
        fraction = schedule.get("warmup_fraction", DEFAULT_WARMUP_FRACTION)
        lines += [
            f"warmup = max(1, math.ceil({fraction!r} * {total}))",
            "scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [",
            "    torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warmup, total_iters=warmup),",
            f"    torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, {total} - warmup)),",
            "], milestones=[warmup])",
        ]
    lines += _precision_lines(config.get("precision", "fp32"), str(training.get("device", "cuda")))
    return "\n".join(lines) + "\n"


def _precision_lines(precision: str, device: str) -> list[str]:
    """The training step as the trial ran it: plain for fp32, under autocast for bf16, scaled too for fp16."""
    step = "#     if scheduler is not None: scheduler.step()"
    if precision == "fp32":
        return ["", "# in the training loop, after each optimizer.step():", step]
    device_type = device.partition(":")[0]
    dtype = {"bf16": "bfloat16", "fp16": "float16"}[precision]
    lines = ["", f"# mixed precision {precision}, as the trial trained: forward and loss under autocast"]
    if precision == "fp16":
        lines += [f"scaler = torch.amp.GradScaler({device_type!r})  # fp16 gradients need loss scaling"]
    lines += [
        "# in the training loop:",
        f"#     with torch.autocast({device_type!r}, dtype=torch.{dtype}):",
        "#         loss = loss_fn(model(inputs), targets)",
        "#     optimizer.zero_grad()",
    ]
    if precision == "fp16":
        lines += ["#     scaler.scale(loss).backward()", "#     scaler.step(optimizer)", "#     scaler.update()"]
    else:
        lines += ["#     loss.backward()", "#     optimizer.step()"]
    return [*lines, step]


def _literal(value: Any) -> str:
    if isinstance(value, list):
        return "(" + ", ".join(repr(v) for v in value) + ")"
    return repr(value)
