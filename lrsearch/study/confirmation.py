"""Winners that survive a new seed (``search.confirm``).

A trial's value is one noisy draw: its configuration trained once, from one seed's initial weights and batch order.
The best of N such draws is flattered by luck (the winner's curse), and a user retrains the winner on another seed.
So, once the searched trials have taken their share of the budget, the study's last trials train its best
``configs`` configurations again, each on ``seeds`` new seeds (``train.seed + 1000·j``, j = 1..seeds), and the
study's answer is the configuration with the best mean over its seeds (:func:`lrsearch.study.results.study_answer`).

Confirmation trials are trials of the study like any other (they count in ``n_trials``), queued with the
configuration they confirm: their user attributes name that trial (:data:`CONFIRMS_ATTR`) and their seed
(:data:`SEED_ATTR`); they train in full and are never pruned.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

    from lrsearch.config.spec import StudySpec

__all__ = ["CONFIRMS_ATTR", "SEED_ATTR", "confirmation_seed", "is_confirmation", "queue_confirmations", "trial_seed"]

CONFIRMS_ATTR = "confirms"
"""User attribute of a confirmation trial: the number of the trial whose configuration it trains again."""
SEED_ATTR = "seed"
"""User attribute of a trial that trains with its own seed instead of ``train.seed``."""
SEED_STEP = 1000
"""Confirmation seeds are ``train.seed + SEED_STEP * j``: far from the seeds users and benchmarks count up from."""


def confirmation_seed(seed: int, j: int) -> int:
    """The ``j``-th (1-based) new seed of a study trained with ``seed``."""
    return seed + SEED_STEP * j


def is_confirmation(trial: optuna.trial.FrozenTrial) -> bool:
    return CONFIRMS_ATTR in trial.user_attrs


def trial_seed(trial: optuna.trial.FrozenTrial | optuna.Trial, seed: int) -> int:
    """The seed ``trial`` trains with: its own (a confirmation's), else the study's ``seed``."""
    return int(trial.user_attrs.get(SEED_ATTR, seed))


def queue_confirmations(study: optuna.Study, spec: StudySpec) -> tuple[int, int | None]:
    """Queue the confirmation trials that are due and not queued yet.

    They are due once the searched trials (every trial that is not a confirmation and may still count in the
    budget) number ``n_trials - configs * seeds``: the budget's rest is theirs. The configurations confirmed are the
    best ``configs`` distinct ones among the complete trials at that moment (with several workers, trials still
    running may later beat one of them: it stays unconfirmed).

    Returns:
        How many confirmations wait to train, and how many more searched trials the budget leaves before them
        (None where the study confirms nothing): the study loop asks no more at once, so a stack of trials never
        eats the confirmations' share. One read of the study's trials.
    """
    import optuna

    from lrsearch.study.states import NEVER_TRAINED

    plan = spec.confirmation
    if plan is None:
        return 0, None
    states = optuna.trial.TrialState
    trials = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("fail_reason") not in NEVER_TRAINED]
    live = (states.COMPLETE, states.PRUNED, states.RUNNING, states.WAITING)
    searched = [t for t in trials if not is_confirmation(t) and t.state in live]
    waiting = sum(is_confirmation(t) and t.state == states.WAITING for t in trials)
    room = spec.budget.n_trials - plan.configs * plan.seeds - len(searched)
    if room > 0:
        return waiting, room
    best = _best_configurations(study, searched, plan.configs)
    queued = {(t.user_attrs[CONFIRMS_ATTR], trial_seed(t, spec.train.seed)) for t in trials if is_confirmation(t)}
    free = spec.budget.n_trials - sum(t.state in live for t in trials)
    for trial in best:
        for j in range(1, plan.seeds + 1):
            seed = confirmation_seed(spec.train.seed, j)
            if (trial.number, seed) in queued or free <= 0:
                continue
            study.enqueue_trial(trial.params, user_attrs={CONFIRMS_ATTR: trial.number, SEED_ATTR: seed})
            waiting, free = waiting + 1, free - 1
    return waiting, room


def _best_configurations(study: optuna.Study, trials: list[optuna.trial.FrozenTrial],
                         count: int) -> list[optuna.trial.FrozenTrial]:
    """The best ``count`` complete trials of distinct configurations (a configuration is the first trial that
    trained it), best first."""
    import math

    import optuna

    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None
                and math.isfinite(t.value) and not t.user_attrs.get("diverged", False)]
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    complete.sort(key=lambda t: (sign * t.value, t.number))
    chosen: list[optuna.trial.FrozenTrial] = []
    seen: set[str] = set()
    for trial in complete:
        key = json.dumps(trial.user_attrs.get("config"), sort_keys=True)
        if key not in seen:
            seen.add(key)
            chosen.append(trial)
        if len(chosen) == count:
            break
    return chosen
