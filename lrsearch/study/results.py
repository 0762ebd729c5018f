"""Reading a study back: its answer (the configuration to take home, with its value on every seed it trained with),
its top trials, a trial's configuration in plain names, and the summaries that ``show`` and ``studies`` print. JSON
has no Infinity or NaN, so non-finite values come back as ``None``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lrsearch.config.search_space import flat_params
from lrsearch.errors import LrsearchError, UsageError
from lrsearch.training.trial import finite

if TYPE_CHECKING:
    import optuna


@dataclass
class Answer:
    """What a study returns: the configuration to take home, and what it scored on each seed it trained with."""

    trial: optuna.trial.FrozenTrial
    """The trial that first trained the configuration (the one ``export`` writes)."""
    values: list[float]
    """Its value on each seed: the trial's, then its confirmations' (a diverged one counts as the worst value)."""
    seeds: list[int]
    trials: list[int]
    """The trials each value comes from."""

    @property
    def config(self) -> dict[str, Any]:
        return self.trial.user_attrs["config"]

    @property
    def value(self) -> float:
        """The mean over its seeds."""
        return sum(self.values) / len(self.values)

    @property
    def spread(self) -> float | None:
        """The sample standard deviation over its seeds (None for one seed)."""
        if len(self.values) < 2:
            return None
        mean = self.value
        return math.sqrt(sum((v - mean) ** 2 for v in self.values) / (len(self.values) - 1))


def answers(study: optuna.Study) -> dict[int, Answer]:
    """Every complete configuration of the study with its values per seed, by the number of its first trial."""
    import optuna

    from lrsearch.study.confirmation import CONFIRMS_ATTR, is_confirmation, trial_seed

    states = optuna.trial.TrialState
    seed = study.user_attrs.get("spec", {}).get("train", {}).get("seed", 0)
    worst = math.inf if study.direction == optuna.study.StudyDirection.MINIMIZE else -math.inf
    trials = study.get_trials(deepcopy=False)
    def seed_of(t: optuna.trial.FrozenTrial) -> int:
        return int(t.user_attrs.get("training", {}).get("seed", trial_seed(t, seed)))

    out = {t.number: Answer(t, [t.value], [seed_of(t)], [t.number]) for t in trials
           if t.state == states.COMPLETE and finite(t.value) is not None and not t.user_attrs.get("diverged")
           and not is_confirmation(t) and "config" in t.user_attrs}
    for t in trials:
        answer = out.get(t.user_attrs.get(CONFIRMS_ATTR, -1)) if is_confirmation(t) else None
        if answer is None or t.state not in (states.COMPLETE, states.PRUNED):
            continue
        value = t.value if t.state == states.COMPLETE and finite(t.value) is not None else worst
        answer.values.append(value)
        answer.seeds.append(seed_of(t))
        answer.trials.append(t.number)
    return out


def study_answer(study: optuna.Study) -> Answer:
    """The configuration the study returns: among those confirmed on new seeds (``search.confirm``), the best mean;
    where none is, the best complete trial that did not diverge. Ties go to the earlier trial.

    Raises:
        UsageError: the study has no complete trial yet.
    """
    import optuna

    found = list(answers(study).values())
    if not found:
        raise UsageError(f"study {study.study_name!r} has no complete trial yet")
    confirmed = [a for a in found if len(a.values) > 1]
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1.0
    return min(confirmed or found, key=lambda a: (sign * a.value, a.trial.number))


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The trial of the study's answer (:func:`study_answer`): its best complete trial that did not diverge, or,
    where configurations were confirmed on new seeds, the first trial of the one with the best mean.

    Raises:
        UsageError: the study has no complete trial yet.
    """
    return study_answer(study).trial


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
    """``show --format json``: the study, its answer (``best_trial``: the returned configuration's first trial, its
    mean value and each seed's) and every trial, values null where not finite."""
    try:
        answer = study_answer(study)
        best_json: dict[str, Any] | None = {
            "number": answer.trial.number, "value": finite(answer.value), "spread": finite(answer.spread),
            "values": [finite(v) for v in answer.values], "seeds": answer.seeds, "trials": answer.trials,
            "params": plain_params(answer.trial)}
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
