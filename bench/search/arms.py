"""The arms of the search benchmark: lrsearch's default search and what a user would pick instead, all run through
lrsearch's own study loop (``lrsearch.study.loop.run_study``) on Optuna's in-memory storage, so every arm trains
with the same code; only the sampler, the pruner, the trial budget and the study file's ``search`` keys differ.

What an arm *returns* is what a user takes home. For lrsearch's own searches that is what the study answers
(:func:`returned`: where the study confirmed its best configurations on new seeds, the best confirmed mean; else
its best trial). For the baselines (random search, the textbook, Optuna out of the box, Syne Tune's ASHA) it is
their best recorded complete trial, as those tools report it.

A peer library's method (Syne Tune's ASHA) runs when ``syne_tune`` is installed (``pip install syne-tune``): its
scheduler proposes configurations and stops trials through the same trainer, over the same space.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna


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
    search: dict[str, Any] = field(default_factory=dict)
    """Study-file ``search`` keys the arm is about; a lrsearch whose study file rejects them skips the arm."""
    sampler_options: dict[str, Any] = field(default_factory=dict)
    """Study-file settings of the default sampler (``sampler.prior_share``...): an ablation of the default; skipped
    like ``search`` where this lrsearch rejects them."""
    pruner_options: dict[str, Any] = field(default_factory=dict)
    """The same for the default pruner (``pruner.epoch_budget``...)."""
    baseline: bool = False
    """Not lrsearch's search: it returns its best recorded trial, and confirmation is off (``search.confirm:
    none``) where this lrsearch has it, so the baseline stays what the tool it stands for does."""
    views: tuple[int, ...] = ()
    """After how many trials the report reads the arm's choice as an arm of its own, ``<arm>@<n>`` (random: @25 and
    @100); none: once, at the arm's end, under the arm's name."""
    note: str = ""


ARMS: dict[str, Arm] = {a.name: a for a in [
    Arm("lrsearch", note="lrsearch's default: no sampler or pruner written in the study file"),
    Arm("lrsearch-no-confirm", search={"confirm": "none"},
        note="confirmation off, written in the study file (the default since 2026-12-02: the same trials)"),
    Arm("lrsearch-confirm-2x1", search={"confirm": {"configs": 2, "seeds": 1}},
        note="the default confirming its 2 best configurations on 1 new seed each (confirm: auto; the default "
             "until 2026-12-02)"),
    Arm("lrsearch-confirm-3x1", search={"confirm": {"configs": 3, "seeds": 1}},
        note="the default confirming its 3 best configurations on 1 new seed each"),
    Arm("lrsearch-confirm-1x2", search={"confirm": {"configs": 1, "seeds": 2}},
        note="the default confirming its best configuration on 2 new seeds"),
    Arm("tuned-adamw", search={"optimizers": ["adamw"]},
        note="the default search restricted to AdamW: what a user who tunes only AdamW gets (family tasks)"),
    Arm("random", sampler="random", pruner="none", n_trials=100, baseline=True, views=(12, 25, 100),
        note="random search, no pruning: one run of 100 trials, its first 25 are random@25; random@12 is random "
             "search on about the epochs the default spends (12 of 25 full trials)"),
    Arm("textbook", portfolio_only=True, baseline=True,
        note="each configuration of the study's portfolio once (the first 4 textbook configurations it can run: "
             "Adam 1e-3, AdamW, SGD momentum / Nesterov 0.1 cosine on the base tasks); the best"),
    Arm("optuna-oob", custom="optuna-oob", baseline=True,
        note="Optuna out of the box: TPESampler() + HyperbandPruner()"),
    Arm("syne-tune-asha", custom="syne-tune-asha", baseline=True,
        note="Syne Tune's ASHA (grace 1 epoch, reduction 3)"),
    Arm("lrsearch-0.1", sampler="tpe", pruner="hyperband", note="lrsearch's default before: its TPE + Hyperband"),
    Arm("prior-no-pruning", sampler="prior", pruner="none",
        note="ablation: the default's sampler and portfolio, no pruning (what the halving pruner costs and saves)"),
    Arm("lrsearch-epochs-1", pruner_options={"epoch_budget": 1.0},
        note="ablation: the default given the epochs of 25 full trials (pruner.epoch_budget: 1), about random@25's"),
    Arm("lrsearch-keep-half", pruner_options={"keep": 0.5},
        note="ablation: half of a rung's trials go on (pruner.keep: 0.5; the default 1/3)"),
    Arm("lrsearch-rung-third", pruner_options={"first_rung": 1 / 3},
        note="ablation: rungs at 1/3 and 2/3 of the epochs (pruner.first_rung; the default 1/4 and 1/2)"),
    Arm("lrsearch-prior-half", sampler_options={"prior_share": 0.5},
        note="ablation: half the searched trials from the prior (sampler.prior_share: 0.5; the default 0.25)"),
    Arm("lrsearch-uniform-quarter", sampler_options={"uniform_share": 0.25},
        note="ablation: a quarter of the trials uniform over the space, PriorBand's third source "
             "(sampler.uniform_share: 0.25; the default 0)"),
]}
DEFAULT_ARMS = ("lrsearch", "lrsearch-confirm-2x1", "lrsearch-confirm-3x1", "lrsearch-confirm-1x2", "random",
                "textbook", "optuna-oob", "syne-tune-asha")
"""What ``run.py`` runs on the base tasks unless ``--arms`` says otherwise; the ablations (``targets.ABLATIONS``) and
``lrsearch-0.1`` stay selectable."""
QUICK_ARMS = ("lrsearch", "lrsearch-confirm-2x1", "random", "textbook", "optuna-oob", "syne-tune-asha")
"""``run.py --quick``: the arms of issue 23's targets, with one confirmation setting (``auto``'s)."""
FAMILY_ARMS = ("lrsearch", "tuned-adamw", "random", "textbook")
"""What ``run.py`` runs on the family tasks (``search_tasks.FAMILY_TASKS``) unless ``--arms`` says otherwise: the
default against tuned AdamW (issue 22), with random@25 and the textbook (one per family) as the yardsticks."""


def views(arm: Arm, trials: int) -> dict[str, int]:
    """The arm's choices the report reads, by name, of those its ``trials`` reach: ``random@25`` after 25 trials
    (not ``random@100`` where it ran 25); the arm's name at its end."""
    return {f"{arm.name}@{n}": n for n in arm.views if n <= trials} if arm.views else {arm.name: trials}


def study_file(arm: Arm, study: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The arm's study file for the task's ``study``, or None and why, when this lrsearch rejects a ``search`` key
    the arm needs (the arm then starts working the moment the package accepts the key)."""
    from lrsearch.config.spec import spec_from_dict
    from lrsearch.errors import SpecError

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
    data["search"].update(arm.search)
    data["sampler"].update(arm.sampler_options)
    data.setdefault("pruner", {}).update(arm.pruner_options)
    try:
        spec_from_dict(data)
    except SpecError as exc:
        keys = [f"search.{k}" for k in arm.search] + [f"sampler.{k}" for k in arm.sampler_options] + \
            [f"pruner.{k}" for k in arm.pruner_options]
        problems = [p.split(" (allowed")[0] for p in exc.problems if any(k in p for k in keys)]
        return None, f"{arm.name} skipped: this lrsearch rejects {'; '.join(problems or exc.problems)}"
    if arm.baseline:
        quiet = copy.deepcopy(data)
        quiet["search"]["confirm"] = "none"
        try:
            spec_from_dict(quiet)
            data = quiet
        except SpecError:
            pass  # this lrsearch has no confirmation to turn off
    return data, ""


def run_arm(arm: Arm, study: dict[str, Any], prepared: Any, export_to: Path | None = None) -> dict[str, Any] | str:
    """Run one arm on one task and seed: every trial (``record``), the wall time and, for lrsearch's own searches,
    what the study returns (``returned``); ``export_to`` also writes the returned trial as ``lrsearch export``
    does. Returns why instead, when this lrsearch cannot run the arm."""
    started = time.perf_counter()
    data, why = study_file(arm, study)
    if data is None:
        return why
    answer = None
    if arm.custom == "syne-tune-asha":
        from peer import syne_tune_asha

        trials = syne_tune_asha(data, prepared, arm.n_trials)
    else:
        created = _run_study(arm, data, prepared)
        trials = [record(t) for t in sorted(created.get_trials(deepcopy=False), key=lambda t: t.number)]
        answer = None if arm.baseline else returned(created)
        if export_to is not None and answer is not None:
            _export(created, answer["trial"], export_to)
    return {"arm": arm.name, "budget": arm.n_trials, "trials": trials, "returned": answer,
            "wall_seconds": round(time.perf_counter() - started, 3)}


def _run_study(arm: Arm, data: dict[str, Any], prepared: Any) -> optuna.Study:
    import optuna

    from lrsearch.config.spec import spec_from_dict
    from lrsearch.study.loop import run_study
    from lrsearch.study.storage import create_study

    spec = spec_from_dict(data)
    storage = optuna.storages.InMemoryStorage()
    if arm.custom == "optuna-oob":
        created = optuna.create_study(storage=storage, study_name=spec.name, direction=spec.objective.direction,
                                      sampler=optuna.samplers.TPESampler(seed=spec.sampler.seed),
                                      pruner=optuna.pruners.HyperbandPruner())
        created.set_user_attr("spec", spec.model_dump(mode="json"))
    else:
        created = create_study(spec, storage, spec.name, warm_start=_warm_start(spec))
    run_study(created, storage, dataclasses.replace(prepared, spec=spec))
    return created


def _warm_start(spec: Any) -> dict[str, dict[str, Any]] | None:
    """The study's ``search.warm_start`` configurations, resolved as ``tune`` resolves them for a new study (the
    study loop only reads what ``create_study`` is given). The bench warm-starts from exported files only: its
    studies live in memory, so the storage named here is one that does not exist."""
    if not spec.search.warm_start:
        return None
    import tempfile

    from lrsearch.study.warm_start import resolve_warm_start

    with tempfile.TemporaryDirectory() as empty:
        return resolve_warm_start(spec, str(Path(empty) / "none.journal"))


def returned(study: optuna.Study) -> dict[str, Any] | None:
    """What a lrsearch study returns to its user (``lrsearch.study.results.study_answer``: among the configurations
    it confirmed on new seeds, the best mean; where none is, its best trial): ``{trial, config, recorded, values,
    seeds}`` (the number of the configuration's first trial, the configuration, the value the study reports for it,
    the values that mean is made of and their training seeds), or None when no trial completed. The one place the
    bench reads a study's answer."""
    from lrsearch.errors import LrsearchError
    from lrsearch.study.results import study_answer

    try:
        answer = study_answer(study)
    except LrsearchError:
        return None
    return {"trial": answer.trial.number, "config": answer.config, "recorded": float(answer.value),
            "values": [float(v) for v in answer.values], "seeds": list(answer.seeds)}


def _export(study: optuna.Study, number: int, path: Path) -> None:
    from lrsearch.tracking.export import render, trial_config

    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(trial_config(study, trial), "json"))


def record(trial: Any) -> dict[str, Any]:
    """What the report needs of a finished trial. A diverged trial reports one value more than it trained epochs
    (the worst value, at the epoch it blew up): that epoch was trained in part, and counts. ``seed`` is its
    training seed (no retraining seed may be one); ``tags``, what the study says about the trial's part in it
    (a confirmation run, a warm start), by any user attribute named so."""
    value = trial.value if trial.state.name == "COMPLETE" else None
    config = trial.user_attrs.get("config", {})
    tags = {k: v for k, v in trial.user_attrs.items() if "confirm" in k or "warm" in k}
    return {"number": trial.number, "state": trial.state.name, "value": value,
            "epochs": len(trial.intermediate_values), "portfolio": trial.user_attrs.get("portfolio"),
            "optimizer": config.get("optimizer"), "lr": config.get("params", {}).get("lr"),
            "diverged": bool(trial.user_attrs.get("diverged", False)), "config": config or None,
            "seed": trial.user_attrs.get("training", {}).get("seed"),
            "seconds": trial.duration.total_seconds() if trial.duration is not None else None,
            **({"tags": tags} if tags else {})}


def complete(trial: dict[str, Any]) -> bool:
    """A trial that can be an arm's choice: complete, finite, with its configuration recorded."""
    return trial["value"] is not None and math.isfinite(trial["value"]) and bool(trial.get("config"))


def available(arm: Arm, installed: Callable[[str], bool]) -> bool:
    """Whether the arm can run here: the peer arm needs its library."""
    return arm.custom != "syne-tune-asha" or installed("syne_tune")
