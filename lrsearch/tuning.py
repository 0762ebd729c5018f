"""``tune``: run a study to its budget — resumable, shareable between workers, with observers for progress and
tracking.

The budget ``n_trials`` is the study's total of complete + pruned trials: a rerun runs only the remainder, and
several processes sharing one study stop at exactly ``n_trials`` (a trial starts only if fewer than ``n_trials``
live or finished trials come before it).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lrsearch.errors import SpecError, TaskError, TrialRuntimeError, UsageError
from lrsearch.spec import Budget, StudySpec, load_spec, spec_from_dict
from lrsearch.studies import PruneSchedule
from lrsearch.threads import configure_threads, torch_threads

if TYPE_CHECKING:
    import optuna

    from lrsearch.tasks import Task
    from lrsearch.trial_runner import Collective, EpochMetrics, TrainData, TrialOutcome

MAX_CONSECUTIVE_FAILURES = 3
"""A failing trial is a result, but this many failures in a row means the task itself is broken: stop."""
POLL_SECONDS = 1.0
_TAKEN = "budget already taken by other workers"


class TuneObserver(Protocol):
    """Sees a study's progress; the progress display and MLflow tracking are observers. Rank 0 only."""

    def study_started(self, study: optuna.Study, spec: StudySpec) -> None: ...

    def trial_started(self, trial: optuna.Trial, config: dict[str, Any]) -> None: ...

    def epoch_ended(self, trial: optuna.Trial, epoch: EpochMetrics) -> None: ...

    def trial_ended(
        self, trial: optuna.Trial, state: str, outcome: TrialOutcome | None, error: BaseException | None
    ) -> None: ...

    def study_ended(self, study: optuna.Study, error: BaseException | None = None) -> None:
        """``error`` is what ended the run early (KeyboardInterrupt for Ctrl-C), None when it ran to its end."""
        ...


class _BudgetReached(Exception):
    """Another worker took the last slot of the budget between our check and our ask."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised where a KeyboardInterrupt would be, so Optuna fails the running trial the same way."""


@dataclass
class Overrides:
    """Command-line values that replace single fields of the study file."""

    n_trials: int | None = None
    epochs: int | None = None
    timeout: float | None = None
    sampler: str | None = None
    pruner: str | None = None
    seed: int | None = None
    device: str | None = None
    nproc_per_trial: int | str | None = None
    lr_range: str | None = None
    batch_trials: int | None = None

    def apply(self, spec: StudySpec) -> StudySpec:
        data = spec.model_dump(mode="json")
        updates = {
            ("budget", "n_trials"): self.n_trials, ("budget", "epochs"): self.epochs,
            ("budget", "timeout"): self.timeout, ("sampler", "name"): self.sampler, ("pruner", "name"): self.pruner,
            ("train", "seed"): self.seed, ("train", "device"): self.device,
            ("train", "nproc_per_trial"): self.nproc_per_trial, ("search", "lr_range"): self.lr_range,
            ("train", "batch_trials"): self.batch_trials,
        }
        for (section, key), value in updates.items():
            if value is not None:
                data[section][key] = value
        if self.seed is not None and data["sampler"].get("seed") is None:
            data["sampler"]["seed"] = self.seed
        new = spec_from_dict(data, spec.source or "<study>")
        new.source = spec.source
        return new


def resolve_spec(spec: StudySpec | str | Path | dict[str, Any], overrides: Overrides | None = None) -> StudySpec:
    if isinstance(spec, (str, Path)):
        spec = load_spec(spec)
    elif isinstance(spec, dict):
        spec = spec_from_dict(spec)
    return overrides.apply(spec) if overrides else spec


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"train.device {name!r}: CUDA is not available here (allowed: auto, cpu)")
    return name


@dataclass
class Prepared:
    """Everything a process loads once and reuses for every trial."""

    spec: StudySpec
    task: Task | None
    data: TrainData | None
    device: str
    function: Callable[..., Any] | None = None
    """Function mode (``task.function``): the user's ``train(ctx)``; ``task`` and ``data`` are then None."""


def prepare(spec: StudySpec) -> Prepared:
    """Load the task and its data onto the device once; check the objective metric and batch size against it.

    Function mode imports ``task.function`` instead; its objective metric is checked at its first report.
    """
    from lrsearch.tasks import load_task
    from lrsearch.trial_runner import TrainData

    device = resolve_device(spec.train.device)
    if not isinstance(spec.task, str) and spec.task.function is not None:
        from lrsearch.function_mode import load_function

        return Prepared(spec, None, None, device, load_function(spec))
    task = load_task(spec)
    problems = []
    if spec.objective.metric not in task.metric_names():
        problems.append(
            f"objective.metric: {spec.objective.metric!r} is not reported by this task "
            f"(allowed: {', '.join(task.metric_names())})"
        )
    data = TrainData.from_task(task, device)
    if spec.train.batch_size > len(data.train_x):
        problems.append(
            f"train.batch_size: {spec.train.batch_size} is larger than the training set "
            f"({len(data.train_x)} samples)"
        )
    if problems:
        raise SpecError(spec.source or "<study>", problems)
    return Prepared(spec, task, data, device)


@dataclass
class Objective:
    """Optuna's objective: sample a configuration, train it, report every epoch, return the final metric."""

    study: optuna.Study
    prepared: Prepared
    observers: list[TuneObserver] = field(default_factory=list)
    collective: Collective | None = None
    world_size: int = 1
    fatal: BaseException | None = None
    """A misuse of the trial context (:class:`~lrsearch.errors.TaskError`): every trial would fail alike."""
    schedule: PruneSchedule = field(init=False)

    def __post_init__(self) -> None:
        self.schedule = PruneSchedule(self.study.pruner, self.prepared.spec.budget.epochs)

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna

        from lrsearch.trial_runner import SINGLE_PROCESS, TrialSettings, train_trial

        spec = self.prepared.spec
        self._claim_budget_slot(trial)
        space = spec.search.space().with_lr_ranges(self.study.user_attrs.get("lr_ranges", {}))
        if spec.sampler.name == "grid":
            config = space.suggest_grid(trial, spec.search.grid_points)
        else:
            config = space.suggest(trial)
        settings = TrialSettings(spec.budget.epochs, spec.train.batch_size, spec.train.seed)
        trial.set_user_attr("config", config)
        trial.set_user_attr("training", {"batch_size": settings.batch_size, "epochs": settings.epochs,
                                         "world_size": self.world_size, "seed": settings.seed,
                                         "device": self.prepared.device, "threads": torch_threads()})
        for observer in self.observers:
            observer.trial_started(trial, config)
        collective = self.collective or SINGLE_PROCESS
        try:
            collective.begin_trial(config, settings)
            if self.prepared.function is not None:
                from lrsearch.function_mode import run_function_trial

                outcome = run_function_trial(self.prepared.function, spec, config, settings,
                                             on_epoch=lambda epoch: self._report(trial, epoch),
                                             device=self.prepared.device, trial_number=trial.number)
            else:
                outcome = train_trial(self.prepared.task, self.prepared.data, config, settings,
                                      on_epoch=lambda epoch: self._report(trial, epoch), collective=collective)
        except BaseException as exc:
            if isinstance(exc, TaskError):
                self.fatal = exc
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("fail_reason", reason)
            for observer in self.observers:
                observer.trial_ended(trial, "FAIL", None, exc)
            if not isinstance(exc, KeyboardInterrupt):
                collective.recover()
            raise
        trial.set_user_attr("optimizer_impl", outcome.implementation)
        trial.set_user_attr("diverged", outcome.diverged)
        for name, value in outcome.final.items():
            trial.set_user_attr(name, value)
        if outcome.diverged:
            # The sampler must learn this region is bad: report the worst value at the epoch it blew up.
            trial.report(math.inf if spec.objective.direction == "minimize" else -math.inf, outcome.stopped_epoch)
        state = "PRUNED" if outcome.stopped else "COMPLETE"
        for observer in self.observers:
            observer.trial_ended(trial, state, outcome, None)
        if outcome.stopped:
            raise optuna.TrialPruned(f"{outcome.stopped} at epoch {outcome.stopped_epoch}")
        return outcome.final[spec.objective.metric]

    def _report(self, trial: optuna.Trial, epoch: EpochMetrics) -> bool:
        trial.report(epoch.metrics[self.prepared.spec.objective.metric], epoch.epoch)
        for observer in self.observers:
            observer.epoch_ended(trial, epoch)
        return self.schedule.due(trial.number, epoch.epoch) and trial.should_prune()

    def _claim_budget_slot(self, trial: optuna.Trial) -> None:
        import optuna

        live = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
        ahead = sum(1 for t in self.study.get_trials(deepcopy=False, states=live) if t.number < trial.number)
        if ahead >= self.prepared.spec.budget.n_trials:
            trial.set_user_attr("fail_reason", _TAKEN)
            raise _BudgetReached()


def free_slots(study: optuna.Study, n_trials: int) -> int | None:
    """How many trials this process may start now: None when the budget is complete; 0 (after waiting a poll
    interval) while the rest of the budget runs elsewhere or in a dead process, whose trials Optuna fails once
    their heartbeat is stale and queues for retry (optimize does the same check before every trial)."""
    import optuna

    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    done = sum(t.state in (states.COMPLETE, states.PRUNED) for t in trials)
    running = sum(t.state == states.RUNNING for t in trials)
    waiting = sum(t.state == states.WAITING for t in trials)
    if done >= n_trials:
        return None
    if done + running + waiting >= n_trials and waiting == 0:
        time.sleep(POLL_SECONDS)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        return 0
    return max(1, n_trials - done - running)


def open_slots(study: optuna.Study, budget: Budget) -> Iterator[int]:
    """How many trials this process may start, each time it may start some, until the study's budget
    (``n_trials``, ``timeout``) is spent; both study loops (sequential and batched) run on it."""
    deadline = time.monotonic() + budget.timeout if budget.timeout else None
    while deadline is None or time.monotonic() < deadline:
        free = free_slots(study, budget.n_trials)
        if free is None:
            return
        if free:
            yield free


def run_study(
    study: optuna.Study, prepared: Prepared, observers: list[TuneObserver] | None = None,
    collective: Collective | None = None, world_size: int = 1,
) -> None:
    """Run trials until the study holds ``n_trials`` complete + pruned trials or the timeout passes.

    Trials of dead processes are failed by Optuna's heartbeat check once stale and retried (up to
    ``MAX_RETRY`` times); while other processes' trials are still running, this one waits for them.
    """
    import optuna

    spec = prepared.spec
    objective = Objective(study, prepared, list(observers or []), collective, world_size)
    states = optuna.trial.TrialState
    failures = 0
    for _ in open_slots(study, spec.budget):
        mine: list[optuna.trial.FrozenTrial] = []
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[lambda _, t, out=mine: out.append(t)])
        if objective.fatal is not None:
            raise objective.fatal
        if not mine or mine[0].state != states.FAIL or mine[0].user_attrs.get("fail_reason") == _TAKEN:
            failures = 0
            continue
        failures += 1
        if failures >= MAX_CONSECUTIVE_FAILURES or getattr(collective, "broken", False):
            raise TrialRuntimeError(
                f"{failures} trials in a row failed; last, trial {mine[0].number}: "
                f"{mine[0].user_attrs.get('fail_reason')}"
            )


def run_tune(
    spec: StudySpec | str | Path | dict[str, Any],
    overrides: Overrides | None = None,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    observers: list[TuneObserver] | None = None,
    workers: int = 1,
) -> tuple[optuna.Study | None, bool]:
    """Validate everything, then create or resume the study and run it; False when it was already finished.

    Nothing is created (no storage file, no study) until the study file, the storage URL and the task have
    been checked. Under torchrun, rank 0 runs the study and every other rank follows it (and gets ``None``).
    ``workers`` is how many tune processes share this machine's cores.
    """
    from lrsearch.distributed import check_batch_size, open_gang, prepare_rank, resolve_nproc
    from lrsearch.studies import check_storage_url, count_trials, create_study, open_storage, storage_url
    from lrsearch.torchrun import follow_torchrun, open_torchrun_collective, torchrun_env

    spec = resolve_spec(spec, overrides)
    launch = torchrun_env()
    if launch is not None and launch["rank"] != 0:
        follow_torchrun(spec, launch)  # no storage, no observers: trains what rank 0 announces
        return None, False
    url = storage_url(storage)
    check_storage_url(url)
    prepared = prepare_rank(spec, launch["local_rank"]) if launch else prepare(spec)
    # Under torchrun, train.nproc_per_trial is ignored: torchrun's --nproc-per-node decides.
    nproc = launch["world_size"] if launch else resolve_nproc(spec.train.nproc_per_trial, prepared.device)
    check_batch_size(spec.train.batch_size, nproc)
    if spec.train.batch_trials > 1 and (launch is not None or nproc > 1):
        raise UsageError(f"train.batch_trials {spec.train.batch_trials} trains its trials stacked in one process: "
                         f"it cannot run with {nproc} ranks per trial (nproc_per_trial or torchrun)")
    study = create_study(spec, open_storage(url), study_name or spec.name)
    finished = count_trials(study) >= spec.budget.n_trials
    if finished and launch is None:
        return study, False
    configure_threads(spec.train.threads, workers=launch["local_world_size"] if launch else workers, prepared=prepared)
    group = open_torchrun_collective(prepared, launch) if launch else open_gang(prepared, nproc)
    with group as collective:
        if finished:
            return study, False  # torchrun: rank 0 still joined, so the other ranks are told to stop
        narrow_lr_ranges(study, prepared)
        observers = list(observers or [])
        for observer in observers:
            observer.study_started(study, spec)
        try:
            if spec.train.batch_trials > 1:
                from lrsearch.batched import run_study_batched

                run_study_batched(study, prepared, observers, spec.train.batch_trials)
            else:
                run_study(study, prepared, observers, collective, world_size=nproc)
        except BaseException as exc:
            for observer in observers:
                observer.study_ended(study, exc)
            raise
        for observer in observers:
            observer.study_ended(study, None)
    return study, True


def narrow_lr_ranges(study: optuna.Study, prepared: Prepared) -> None:
    """``search.lr_range: auto``: before the study's first trial, run the LR range test per optimizer and keep
    [suggestion/10, suggestion*10] (clipped to the preset) as that optimizer's lr interval, in the study's user
    attrs, so every rerun and every worker searches the same space."""
    if prepared.spec.search.lr_range != "auto" or "lr_ranges" in study.user_attrs or study.get_trials(deepcopy=False):
        return
    from lrsearch.lr_finder import lr_find, narrowed_lr_ranges

    results = lr_find(prepared)
    ranges = narrowed_lr_ranges(results, prepared.spec.search.space())
    study.set_user_attr("lr_ranges", {name: [low, high] for name, (low, high) in ranges.items()})
    study.set_user_attr("lr_suggestions", {name: result.suggested_lr for name, result in results.items()})


def tune(
    spec: StudySpec | str | Path | dict[str, Any],
    *,
    storage: str | None = None,
    study_name: str | None = None,
    observers: list[TuneObserver] | None = None,
    **overrides: Any,
) -> optuna.Study:
    """Run (or resume) a study to its budget and return it.

    Args:
        spec: A study file path, its parsed dict, or a :class:`~lrsearch.spec.StudySpec`.
        storage: Optuna storage URL; default ``LRSEARCH_STORAGE`` or ``sqlite:///lrsearch.db``.
        study_name: Defaults to the study file's ``name``.
        observers: Progress display, tracking: see :class:`TuneObserver`.
        **overrides: Single fields to replace, as the CLI flags: ``n_trials``, ``epochs``, ``timeout``,
            ``sampler``, ``pruner``, ``seed``, ``device``, ``nproc_per_trial``, ``lr_range``, ``batch_trials``.

    Returns:
        The study; ``None`` on a non-zero rank under torchrun (rank 0 holds the study).

    Example:
        >>> study = lrsearch.tune("studies/quadratic.yaml", n_trials=5, storage="sqlite:///quad.db")
        >>> sorted(study.best_trial.user_attrs["config"])
        ['optimizer', 'params', 'schedule']
    """
    try:
        options = Overrides(**overrides)
    except TypeError as exc:
        raise UsageError(f"tune(): {exc}") from None
    study, _ = run_tune(spec, options, storage=storage, study_name=study_name, observers=observers)
    return study
