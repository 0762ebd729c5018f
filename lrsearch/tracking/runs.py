"""What a trial's MLflow run holds, in one place for the live record (:mod:`lrsearch.tracking.tracker`,
:mod:`lrsearch.tracking.recorder`) and for the repair of the mirror (:mod:`lrsearch.tracking.mirror`): its status,
tags, params and final metrics, computed from what Optuna keeps of the trial."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

PARENT_ATTR = "mlflow_parent_run_id"
"""Study user attribute: the id of the study's MLflow parent run."""
RUN_ATTR = "mlflow_run_id"
"""Trial user attribute: the id of the trial's MLflow run (set by the live record before Optuna is told)."""
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
"""MLflow run status of a finished trial, by the trial's Optuna state."""
TRIAL_ROLE, STUDY_ROLE = "trial", "study"
"""Values of the tag ``lrsearch.role``: a trial's child run, the study's parent run."""
PROCESS_STOPPED = "the tune process stopped"
"""The ``fail_reason`` of a trial whose process died without recording why."""
_REASON_LIMIT = 4000
_NOT_METRICS = ("diverged", "skipped_steps", "objective_epoch", "confirms", "seed")
"""Numeric-looking user attributes of a trial that are not its final metrics."""


def result_tags(state: str, *, diverged: bool = False, implementation: str | None = None,
                stopped_epoch: int | None = None, skipped_steps: int = 0,
                fail_reason: str | None = None) -> dict[str, str]:
    """The tags that say how a trial ended: ``state``, ``diverged``, ``pruned``, and where known
    ``optimizer_impl``, ``stopped`` (``pruned at epoch 3``, ``diverged at epoch 0``), ``skipped_steps`` (fp16 steps
    the gradient scaler skipped) and ``fail_reason``."""
    tags = {"state": state, "diverged": str(diverged).lower(), "pruned": str(state == "PRUNED").lower()}
    if implementation is not None:
        tags["optimizer_impl"] = implementation
    if state == "PRUNED" and stopped_epoch is not None:
        tags["stopped"] = f"{'diverged' if diverged else 'pruned'} at epoch {stopped_epoch}"
    if skipped_steps:
        tags["skipped_steps"] = str(skipped_steps)
    if fail_reason is not None:
        tags["fail_reason"] = fail_reason[:_REASON_LIMIT]
    return tags


def role_tags(user_attrs: dict[str, Any]) -> dict[str, str]:
    """Tags that say why a trial ran, from its user attributes: ``lrsearch.confirms`` (the trial whose
    configuration a confirmation trains again, on the seed in its params) or ``lrsearch.portfolio`` (a textbook or
    warm-start configuration run first)."""
    tags = {}
    if "confirms" in user_attrs:
        tags["lrsearch.confirms"] = str(user_attrs["confirms"])
    if "portfolio" in user_attrs:
        tags["lrsearch.portfolio"] = str(user_attrs["portfolio"])
    return tags


def trial_result_tags(trial: optuna.trial.FrozenTrial) -> dict[str, str]:
    """:func:`result_tags` of a finished trial, from its user attributes and reports."""
    steps = list(trial.intermediate_values)
    return result_tags(trial.state.name, diverged=bool(trial.user_attrs.get("diverged", False)),
                       implementation=trial.user_attrs.get("optimizer_impl"),
                       stopped_epoch=max(steps) if steps else None,
                       skipped_steps=int(trial.user_attrs.get("skipped_steps", 0)),
                       fail_reason=trial.user_attrs.get("fail_reason"))


def trial_params(config: dict[str, Any], training: dict[str, Any],
                 param_split: dict[str, list[str]] | None = None) -> dict[str, str]:
    """A trial's run params: its optimizer and hyperparameters in plain names, its schedule, its training
    settings, and which parameters each part of a pair of optimizers updated (``param_split.muon``,
    ``param_split.adamw``); as MLflow keeps them (text)."""
    schedule = {("schedule" if k == "name" else f"schedule.{k}"): v for k, v in config["schedule"].items()}
    split = {f"param_split.{part}": names for part, names in (param_split or {}).items()}
    params = {"optimizer": config["optimizer"], **config["params"], **schedule, **training, **split}
    return {k: param_text(v) for k, v in params.items()}


def end_params(outcome: Any) -> dict[str, str]:
    """The run params a trial learns only as it trains: its parameter split and its steps per epoch."""
    extra: dict[str, Any] = {f"param_split.{part}": names for part, names in (outcome.param_split or {}).items()}
    if outcome.steps_per_epoch:
        extra["steps_per_epoch"] = outcome.steps_per_epoch
    return {k: param_text(v) for k, v in extra.items()}


def final_metrics(trial: optuna.trial.FrozenTrial) -> dict[str, float]:
    """The finite final metrics a trial keeps as user attributes (``train_loss``, ``val_loss``, ``val_<metric>``, or
    what a training function returned)."""
    return {k: float(v) for k, v in trial.user_attrs.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _NOT_METRICS
            and math.isfinite(v)}


def point_time(trial: Any) -> int:
    """The timestamp (ms) of every metric point of ``trial`` (an ``optuna.Trial`` or a frozen one): its start, which
    every process reads alike from the storage. MLflow's SQL store keys a point by metric, step, value and time, so
    the live record and a reconciliation that write the same point at once store it once (an epoch's wall time is
    its ``epoch_seconds`` metric)."""
    start = trial.datetime_start
    return int(start.timestamp() * 1000) if start is not None else 0


def param_text(value: Any) -> str:
    """A param's value as MLflow stores it: JSON for lists and dicts, capped at MLflow's 6000 characters."""
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:6000]
