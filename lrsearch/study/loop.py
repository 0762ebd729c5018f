"""The study loop: ask trials within the budget, train them, tell Optuna how each ended; until the budget is spent.

One loop serves every way a trial trains. :class:`TrialTrainer` is its pluggable step, "train these K
configurations": K = 1 trains one trial (in this process, or over a DDP gang or torchrun ranks through their
collective, or in the user's own loop in function mode), K > 1 trains ``train.batch_trials`` trials as one stacked
model. Trials of dead processes are failed once their heartbeat is stale and retried; while other processes' trials
still run, this one waits for them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from lrsearch.errors import TaskError, TrialRuntimeError
from lrsearch.study.algorithms import PruningPoints
from lrsearch.study.budget import ask_within_budget, open_slots
from lrsearch.study.confirmation import queue_confirmations, trial_seed
from lrsearch.study.heartbeat import fail_stale_trials, heartbeats
from lrsearch.study.observers import Observers, observing
from lrsearch.study.trials import EpochReporter, finish_trial, start_trial
from lrsearch.training.memory import PeakMemory, is_out_of_memory, release_memory
from lrsearch.training.trial import SINGLE_PROCESS, TrialSettings

if TYPE_CHECKING:
    import optuna

    from lrsearch.study.observers import TuneObserver
    from lrsearch.training.prepared import Prepared
    from lrsearch.training.trial import Collective, EpochMetrics, TrialOutcome

MAX_CONSECUTIVE_FAILURES = 3
"""A failing trial is a result, but this many failed steps in a row means the task itself is broken (or, when
each ran out of memory, its batch too large for the device): stop."""


class TrialTrainer:
    """Trains the configurations the loop gives it: one trial (task, DDP or function mode) or K stacked ones."""

    def __init__(self, prepared: Prepared, collective: Collective = SINGLE_PROCESS) -> None:
        spec = prepared.spec
        self.prepared, self.collective = prepared, collective
        self.settings = TrialSettings(spec.budget.epochs, spec.train.batch_size, spec.train.seed,
                                      precision=spec.train.precision)
        self.batch = spec.train.batch_trials
        """How many trials one step trains."""

    def settings_of(self, trial: optuna.Trial) -> TrialSettings:
        """The trial's settings: the study's, with the trial's own seed where it has one (a confirmation)."""
        return dataclasses.replace(self.settings, seed=trial_seed(trial, self.settings.seed))

    def train(self, numbers: Sequence[int], configs: Sequence[dict[str, Any]],
              hooks: Sequence[Callable[[EpochMetrics], bool]], settings: TrialSettings) -> list[TrialOutcome]:
        """Train ``configs`` (trials ``numbers``, all with ``settings``), each reporting its epochs to its hook; one
        outcome each."""
        prepared = self.prepared
        if prepared.function is not None:
            import optuna

            from lrsearch.training.function_mode import run_function_trial

            return [run_function_trial(prepared.function, prepared.spec, configs[0], settings, hooks[0],
                                       device=prepared.device, trial_number=numbers[0],
                                       pruned_errors=(optuna.TrialPruned,))]
        if self.batch > 1:
            from lrsearch.training.batched import train_trials_batched

            return train_trials_batched(prepared.task, prepared.data, configs, settings, hooks)
        from lrsearch.training.runner import train_trial

        self.collective.begin_trial(configs[0], settings)
        return [train_trial(prepared.task, prepared.data, configs[0], settings, hooks[0], self.collective)]

    def recover(self) -> None:
        """After a failed step: make the ranks usable again (restart a gang); nothing in one process."""
        self.collective.recover()

    @property
    def broken(self) -> bool:
        return self.collective.broken


def run_study(study: optuna.Study, storage: Any, prepared: Prepared,
              observers: Observers | Sequence[TuneObserver] = (), collective: Collective = SINGLE_PROCESS) -> None:
    """Run trials until the study holds ``n_trials`` complete + pruned trials or the timeout passes.

    Args:
        study: The study, created or loaded on ``storage``.
        storage: The storage object the study lives on (its heartbeats are recorded there).
        prepared: The task and data, or the training function, loaded once in this process.
        observers: Progress display, tracking.
        collective: The ranks that train each trial; one process by default.

    Raises:
        TaskError: the task cannot be trained at all (every trial would fail alike).
        TrialRuntimeError: ``MAX_CONSECUTIVE_FAILURES`` steps in a row failed (each out of memory, or not), or the
            ranks broke (torchrun).
    """
    trainer = TrialTrainer(prepared, collective)
    observers = observing(observers)
    points = PruningPoints(study.pruner, prepared.spec.budget.epochs)
    failures = out_of_memory = 0
    for free in open_slots(study, storage, prepared.spec.budget):
        fail_stale_trials(study, storage)  # a dead process's trials are failed and queued for retry: they come first
        # Once due, the best configurations again on new seeds; each trains on its own (stacked trials share a seed).
        waiting, room = queue_confirmations(study, prepared.spec)
        count = 1 if waiting else min(trainer.batch, free, room if room is not None and room > 0 else free)
        trials = ask_within_budget(study, count, prepared.spec.budget.n_trials)
        if not trials:
            continue
        error = _train_and_tell(study, storage, trainer, trials, observers, points)
        if error is None:
            failures = out_of_memory = 0
            continue
        failures += 1
        out_of_memory += is_out_of_memory(error)
        if failures >= MAX_CONSECUTIVE_FAILURES or trainer.broken:
            numbers = ", ".join(str(t.number) for t in trials)
            what = "trials" if trainer.batch == 1 else "batches of trials"
            if out_of_memory == failures:
                raise TrialRuntimeError(f"{failures} {what} in a row ran out of memory on {prepared.device} (last, "
                                        f"trial {numbers}); try a smaller train.batch_size than "
                                        f"{prepared.spec.train.batch_size}")
            raise TrialRuntimeError(f"{failures} {what} in a row failed; last, trial {numbers}: "
                                    f"{type(error).__name__}: {error}")


def _train_and_tell(study: optuna.Study, storage: Any, trainer: TrialTrainer, trials: list[optuna.Trial],
                    observers: Observers, points: PruningPoints) -> BaseException | None:
    """One step: start the trials, train them, finish each; returns the exception that failed them, if any."""
    spec = trainer.prepared.spec
    settings = trainer.settings_of(trials[0])
    training = _training_record(trainer, trials)
    hooks = [EpochReporter(trial, spec.objective, observers, points) for trial in trials]
    memory = PeakMemory(trainer.prepared.device)  # K stacked trials share one peak: they train as one model
    configs: list[dict[str, Any]] = []
    # The first beat at once, before the configuration is sampled and recorded: a process killed from here on
    # leaves a trial that goes stale, and is retried, instead of one that RDB storages keep RUNNING for ever. The
    # beats go on until Optuna holds every result: a slow observer never makes another process fail a trained trial.
    with heartbeats(storage, study, trials):
        try:
            with memory:
                for trial in trials:
                    configs.append(start_trial(study, trial, spec, settings, training, observers))
                outcomes = trainer.train([t.number for t in trials], configs, hooks, settings)
        except BaseException as exc:
            if is_out_of_memory(exc):
                release_memory(exc, trainer.prepared.device)  # before the next trial asks for it again
            for index, trial in enumerate(trials):
                # Observers hear of the end of the trials they heard start of.
                finish_trial(study, trial, spec.objective, observers if index < len(configs) else Observers(),
                             error=exc, peak_memory_mb=memory.mb)
            if isinstance(exc, TaskError) or not isinstance(exc, Exception):
                raise  # a task that cannot train, Ctrl-C, SIGTERM: the study stops here
            trainer.recover()
            return exc
        for trial, outcome in zip(trials, outcomes, strict=True):
            finish_trial(study, trial, spec.objective, observers, outcome, peak_memory_mb=memory.mb)
    return None


def _training_record(trainer: TrialTrainer, trials: list[optuna.Trial]) -> dict[str, Any]:
    from lrsearch.training.threads import torch_threads

    data = trainer.prepared.data
    record: dict[str, Any] = {"world_size": trainer.collective.world_size, "device": trainer.prepared.device,
                              "threads": torch_threads()}
    if data is not None:  # function mode reads its own data
        record["data"] = "streamed" if data.streamed else "tensors"
    if trainer.batch > 1:
        record["batch"] = [t.number for t in trials]
    return record
