"""A peer library's method on the same tasks and budgets: Syne Tune's ASHA (random search with asynchronous
successive halving; Li et al. 2018), its scheduler driving lrsearch's own trainer through Syne Tune's public
scheduler interface (``suggest``, ``on_trial_add``, ``on_trial_result``, ``on_trial_complete``).

It searches lrsearch's relative space (every optimizer in the same coordinates, ``lrsearch.config.priors``), which
Syne Tune's flat configuration spaces can express, and records trials as the other arms do.
"""

from __future__ import annotations

import datetime
import logging
import math
import time
from typing import Any


def syne_tune_asha(study: dict[str, Any], prepared: Any, n_trials: int) -> list[dict[str, Any]]:
    """``n_trials`` trials of Syne Tune's ASHA (grace period 1 epoch, reduction factor 3, one bracket), seeded by
    the study's sampler seed: the same seed proposes the same trials."""
    import numpy as np
    import optuna.distributions as d
    from syne_tune.config_space import choice, loguniform, uniform
    from syne_tune.optimizer.baselines import ASHA

    from lrsearch.config.priors import RelativeSpace
    from lrsearch.config.spec import spec_from_dict
    from lrsearch.training.trial import TrialSettings

    spec = spec_from_dict({**study, "sampler": {"name": "random", "seed": study["sampler"]["seed"]}})
    relative = RelativeSpace(spec.search.space("relative"))
    space = {name: choice(list(dist.choices)) if isinstance(dist, d.CategoricalDistribution)
             else (loguniform if dist.log else uniform)(dist.low, dist.high)
             for name, dist in relative.distributions().items()}
    metric, minimize = spec.objective.metric, spec.objective.direction == "minimize"
    epochs = spec.budget.epochs
    scheduler = ASHA(space, metric=metric, time_attr="epoch", max_t=epochs, do_minimize=minimize,
                     random_seed=spec.sampler.seed, grace_period=1, reduction_factor=3)
    settings = TrialSettings(epochs, spec.train.batch_size, spec.train.seed)
    logging.getLogger("syne_tune").setLevel(logging.ERROR)  # a warning a job about an argument ASHA passes itself
    # ASHA's model-based searcher draws from numpy's global generator besides its seeded one: without a seed there,
    # the same seed proposed other configurations after a few trials (run to run, in one process).
    saved = np.random.get_state()
    np.random.seed(spec.sampler.seed)
    try:
        return _run(scheduler, relative, settings, prepared, n_trials, metric, epochs)
    finally:
        np.random.set_state(saved)


def _run(scheduler: Any, relative: Any, settings: Any, prepared: Any, n_trials: int, metric: str,
         epochs: int) -> list[dict[str, Any]]:
    """The trials: ASHA proposes, lrsearch's trainer trains and reports each epoch, ASHA stops or completes."""
    from syne_tune.backend.trial_status import Trial
    from syne_tune.optimizer.scheduler import SchedulerDecision

    from lrsearch.training.runner import train_trial

    records = []
    for number in range(n_trials):
        suggestion = scheduler.suggest()
        trial = Trial(trial_id=number, config=suggestion.config, creation_time=datetime.datetime.now())
        scheduler.on_trial_add(trial)
        config = relative.decode(suggestion.config)

        def on_epoch(epoch: Any, trial: Trial = trial) -> bool:
            result = {metric: epoch.metrics[metric], "epoch": epoch.epoch + 1}
            return scheduler.on_trial_result(trial, result) == SchedulerDecision.STOP and epoch.epoch + 1 < epochs

        started = time.perf_counter()
        outcome = train_trial(prepared.task, prepared.data, config, settings, on_epoch=on_epoch)
        seconds = time.perf_counter() - started
        value = outcome.final.get(metric) if outcome.stopped is None else None
        if value is not None and math.isfinite(value):
            scheduler.on_trial_complete(trial, {metric: value, "epoch": epochs})
        trained = len(outcome.history) + (1 if outcome.diverged and outcome.stopped_epoch == len(outcome.history)
                                          else 0)
        records.append({"number": number, "state": "COMPLETE" if outcome.stopped is None else "PRUNED",
                        "value": value, "epochs": trained, "portfolio": None, "optimizer": config["optimizer"],
                        "lr": config["params"].get("lr"), "diverged": outcome.diverged, "config": config,
                        "seed": settings.seed, "seconds": round(seconds, 3)})
    return records
