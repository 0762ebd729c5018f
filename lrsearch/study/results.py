"""Reading a study back: its best and top trials, a trial's configuration in plain names, and the summaries that
``show`` and ``studies`` print. JSON has no Infinity or NaN, so non-finite values come back as ``None``."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from lrsearch.config.search_space import flat_params
from lrsearch.errors import LrsearchError, UsageError
from lrsearch.training.trial import finite

if TYPE_CHECKING:
    import optuna


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The best complete trial that did not diverge (a diverged trial is pruned, so it never qualifies).

    Raises:
        UsageError: the study has no complete trial yet.
    """
    import optuna

    complete = [
        t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value) and not t.user_attrs.get("diverged", False)
    ]
    if not complete:
        raise UsageError(f"study {study.study_name!r} has no complete trial yet")
    pick = min if study.direction == optuna.study.StudyDirection.MINIMIZE else max
    return pick(complete, key=lambda t: t.value)


def top_trials(study: optuna.Study, count: int = 5) -> list[optuna.trial.FrozenTrial]:
    """The ``count`` best complete trials, best first."""
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if finite(t.value) is not None]
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(complete, key=lambda t: t.value, reverse=reverse)[:count]


def plain_params(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A trial's configuration in the user's names: optimizer, lr, beta1, ..., schedule."""
    config = trial.user_attrs.get("config")
    return flat_params(config) if config is not None else dict(trial.params)


def study_json(study: optuna.Study) -> dict[str, Any]:
    """``show --format json``: the study, its best trial and every trial, values null where not finite."""
    try:
        best = best_trial(study)
        best_json: dict[str, Any] | None = {"number": best.number, "value": best.value, "params": plain_params(best)}
    except LrsearchError:
        best_json = None
    return {
        "study": study.study_name,
        "direction": study.direction.name.lower(),
        "best_trial": best_json,
        "trials": [
            {
                "number": t.number,
                "state": t.state.name,
                "value": finite(t.value),
                "params": plain_params(t),
                "optuna_params": t.params,
                "user_attrs": {k: finite(v) if isinstance(v, float) else v for k, v in t.user_attrs.items()},
            }
            for t in study.get_trials(deepcopy=False)
        ],
    }


def studies_rows(storage_url: str) -> list[dict[str, Any]]:
    """``studies``: one row per study in the storage, with its trial counts by state and best value."""
    import optuna

    from lrsearch.study.storage import open_storage

    storage = open_storage(storage_url, create=False)
    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=True):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        counts: dict[str, int] = {}
        for t in study.get_trials(deepcopy=False):
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        spec = summary.user_attrs.get("spec", {})
        rows.append({
            "study": summary.study_name,
            "direction": summary.direction.name.lower(),
            "n_trials": summary.n_trials,
            "budget": spec.get("budget", {}).get("n_trials"),
            "states": counts,
            "best_value": finite(summary.best_trial.value) if summary.best_trial else None,
            "best_trial": summary.best_trial.number if summary.best_trial else None,
            "started": summary.datetime_start.isoformat() if summary.datetime_start else None,
        })
    return rows
