"""The arms of the search benchmark: lrsearch's default search and what a user would pick instead, all run through
lrsearch's own study loop (``lrsearch.study.loop.run_study``) on Optuna's in-memory storage, so every arm trains
with the same code; only the sampler, the pruner and the trial budget differ.

A peer library's method (Syne Tune's ASHA) runs when ``syne_tune`` is installed (``pip install syne-tune``): its
scheduler proposes configurations and stops trials through the same trainer, over the same space.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Arm:
    name: str
    sampler: str | None = None
    """A study-file sampler name; None leaves the study file without one (lrsearch's default)."""
    pruner: str | None = None
    n_trials: int = 25
    portfolio_only: bool = False
    """Run the study's textbook configurations once each, nothing else."""
    custom: str | None = None
    """An arm that is not a study-file setting: ``optuna-oob`` or ``syne-tune-asha``."""
    note: str = ""


ARMS: dict[str, Arm] = {a.name: a for a in [
    Arm("lrsearch", note="lrsearch's default: no sampler or pruner written in the study file"),
    Arm("random", sampler="random", pruner="none", n_trials=100, note="random search, no pruning (@10, @25, @100)"),
    Arm("textbook", portfolio_only=True, note="each textbook default once (Adam 1e-3, AdamW, SGD momentum 0.1 cosine)"),
    Arm("optuna-oob", custom="optuna-oob", note="Optuna out of the box: TPESampler() + HyperbandPruner()"),
    Arm("lrsearch-0.1", sampler="tpe", pruner="hyperband", note="lrsearch's default before: its TPE + Hyperband"),
    Arm("prior-no-pruning", sampler="prior", pruner="none",
        note="ablation: the default's sampler and portfolio, no pruning (what the halving pruner costs and saves)"),
    Arm("syne-tune-asha", custom="syne-tune-asha", note="Syne Tune's ASHA (grace 1 epoch, reduction 3)"),
]}


def run_arm(arm: Arm, study: dict[str, Any], prepared: Any) -> dict[str, Any]:
    """Run one arm on one task and seed; every trial as ``{number, state, value, epochs, portfolio, optimizer, lr,
    diverged, config}`` (``config``: the trial's optimizer, hyperparameters and schedule, to retrain it)."""
    started = time.perf_counter()
    if arm.custom == "syne-tune-asha":
        from peer import syne_tune_asha

        trials = syne_tune_asha(study, prepared, arm.n_trials)
    else:
        trials = _run_study(arm, study, prepared)
    return {"arm": arm.name, "trials": trials, "wall_seconds": round(time.perf_counter() - started, 3)}


def _run_study(arm: Arm, study: dict[str, Any], prepared: Any) -> list[dict[str, Any]]:
    import optuna

    from lrsearch.config.spec import spec_from_dict
    from lrsearch.study.loop import run_study
    from lrsearch.study.storage import create_study

    data = copy.deepcopy(study)
    data["budget"]["n_trials"] = arm.n_trials
    if arm.sampler:
        data["sampler"]["name"] = arm.sampler
    if arm.pruner:
        data["pruner"] = {"name": arm.pruner}
    if arm.portfolio_only:
        from lrsearch.config.priors import portfolio

        data["pruner"], data["search"]["portfolio"] = {"name": "none"}, "textbook"
        data["budget"]["n_trials"] = len(portfolio(spec_from_dict(data).space()))
    if arm.custom == "optuna-oob":
        data["sampler"]["name"], data["pruner"] = "tpe", {"name": "none"}  # per-optimizer names, as tpe gets
    spec = spec_from_dict(data)
    storage = optuna.storages.InMemoryStorage()
    if arm.custom == "optuna-oob":
        created = optuna.create_study(storage=storage, study_name=spec.name, direction=spec.objective.direction,
                                      sampler=optuna.samplers.TPESampler(seed=spec.sampler.seed),
                                      pruner=optuna.pruners.HyperbandPruner())
        created.set_user_attr("spec", spec.model_dump(mode="json"))
    else:
        created = create_study(spec, storage, spec.name)
    run_study(created, storage, dataclasses.replace(prepared, spec=spec))
    return [record(t) for t in sorted(created.get_trials(deepcopy=False), key=lambda t: t.number)]


def record(trial: Any) -> dict[str, Any]:
    """What the report needs of a finished trial. A diverged trial reports one value more than it trained epochs
    (the worst value, at the epoch it blew up): that epoch was trained in part, and counts."""
    value = trial.value if trial.state.name == "COMPLETE" else None
    config = trial.user_attrs.get("config", {})
    return {"number": trial.number, "state": trial.state.name, "value": value,
            "epochs": len(trial.intermediate_values), "portfolio": trial.user_attrs.get("portfolio"),
            "optimizer": config.get("optimizer"), "lr": config.get("params", {}).get("lr"),
            "diverged": bool(trial.user_attrs.get("diverged", False)), "config": config or None}


def available(arm: Arm, installed: Callable[[str], bool]) -> bool:
    """Whether the arm can run here: the peer arm needs its library."""
    return arm.custom != "syne-tune-asha" or installed("syne_tune")
