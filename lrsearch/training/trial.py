"""What every trial shares, whoever trains it: its settings, per-epoch metrics and outcome, the divergence rule,
and the :class:`Collective` through which a trial trains over several processes (or just this one)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from torch import Tensor

DIVERGENCE_FACTOR = 10.0
"""A trial diverges when its loss is non-finite or above this many times its first value."""
CHECK_EVERY = 32
"""Steps between divergence checks (each is one host sync); the first steps, where a too-large lr blows up,
are checked at steps 1, 2, 4, 8 and 16."""


def diverging(value: float, first: float | None) -> bool:
    """The divergence rule: ``value`` is non-finite, or above ``DIVERGENCE_FACTOR`` times the first value of the
    same series (``first``; None while there is none yet)."""
    return not math.isfinite(value) or (first is not None and value > DIVERGENCE_FACTOR * abs(first))


def finite(value: float | None) -> float | None:
    """``value`` as a float, or None where it is missing or not finite (JSON holds no NaN or Infinity; a diverged
    trial's value is infinite)."""
    return float(value) if value is not None and math.isfinite(value) else None


def check_due(step: int) -> bool:
    """Whether to check the training loss for divergence after ``step`` (0-based optimizer steps)."""
    return step & (step - 1) == 0 or step % CHECK_EVERY == 0


@dataclass(frozen=True)
class TrialSettings:
    epochs: int
    batch_size: int
    """Global batch: each of ``world_size`` ranks trains on its slice of it."""
    seed: int
    eval_batch_size: int = 4096
    precision: str = "fp32"
    """``train.precision``: ``fp32``, ``bf16`` or ``fp16`` (see :mod:`lrsearch.training.precision`)."""


@dataclass
class EpochMetrics:
    epoch: int
    metrics: dict[str, float]
    """``train_loss``, ``val_loss`` and ``val_<name>`` for each of the task's metrics."""
    lr: float
    epoch_seconds: float
    samples_per_second: float


@dataclass
class TrialOutcome:
    implementation: str
    """The optimizer implementation that trained it (``fused``, ``foreach``, ``default``, ``vmap+fused``, ...),
    recorded on the trial as ``optimizer_impl``."""
    history: list[EpochMetrics] = field(default_factory=list)
    stopped: str | None = None
    """``None`` when all epochs ran, ``"pruned"`` or ``"diverged"`` otherwise."""
    stopped_epoch: int | None = None
    skipped_steps: int = 0
    """Optimizer steps fp16's gradient scaler skipped because the scaled gradients overflowed."""
    value: float | None = None
    """The trial's objective value once the study has scored it (:meth:`objective`), None before or when stopped."""
    value_epoch: int | None = None
    """The epoch :attr:`value` comes from."""
    param_split: dict[str, list[str]] | None = None
    """Which parameters each part of a pair of optimizers updated (Muon's hidden weights, AdamW's rest), by name."""
    steps_per_epoch: int | None = None
    """Optimizer steps per epoch, where the loop knew them (a warm-up share or an export's schedule needs them)."""

    @property
    def diverged(self) -> bool:
        return self.stopped == "diverged"

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1].metrics if self.history else {}

    def stop(self, reason: str, epoch: int) -> None:
        self.stopped, self.stopped_epoch = reason, epoch

    def objective(self, metric: str, direction: str, at: str = "last") -> tuple[float, int]:
        """The objective value and the epoch it comes from: ``metric`` after the last epoch (``at="last"``), or at
        its best epoch (``at="best"``; the earliest of equal ones). The final metrics count as the last epoch's.

        Raises:
            KeyError: ``metric`` was never recorded.
        """
        last_epoch = self.history[-1].epoch if self.history else 0
        final = (self.final[metric], last_epoch)
        if at == "last":
            return final
        series = [(e.metrics[metric], e.epoch) for e in self.history[:-1] if metric in e.metrics] + [final]
        pick = min if direction == "minimize" else max  # both keep the first, earliest, of equal values
        return pick(series, key=lambda value_and_epoch: value_and_epoch[0])


class TrialMonitor:
    """How every trial stops, in one place: the plain loop, each member of a stack of trials and function mode
    all follow it.

    - **Steps**: after optimizer step ``step`` (0-based), at the steps :func:`check_due` names, the training loss
      diverges (:func:`diverging`, against the first step's loss) on any rank: the trial stops at once.
    - **An epoch's end**, in this order: the epoch is recorded; the trial has diverged when the train loss, the
      validation loss or the objective is non-finite, or the watched loss (the train loss, else the validation
      loss, else the objective when it is minimised) is above ``DIVERGENCE_FACTOR`` times its first value (the
      first step's loss for the train loss, else the first epoch's value); else ``on_epoch`` reports the epoch
      (rank 0 only) and its answer, given to every rank, prunes the trial.

    The outcome says how and when the trial stopped (``outcome.stopped``, ``outcome.stopped_epoch``).
    """

    def __init__(self, outcome: TrialOutcome, on_epoch: Callable[[EpochMetrics], bool] | None = None,
                 collective: Collective | None = None, objective: str | None = None, minimize: bool = True) -> None:
        self.outcome, self.on_epoch = outcome, on_epoch
        self.collective = collective if collective is not None else SINGLE_PROCESS
        self.objective, self.minimize = objective, minimize
        self.first: dict[str, float] = {}
        """The reference of each watched loss: its first value."""

    def first_step(self, loss: float) -> None:
        """The first step's training loss (the mean over every rank): what later losses are compared with."""
        self.first["train_loss"] = loss

    def step_diverged(self, step: int, loss: Callable[[], float]) -> bool:
        """Whether the trial diverged at optimizer step ``step`` (it is then stopped at ``epoch``); ``loss()`` reads
        this rank's loss, only at the checked steps (each read is one host sync)."""
        if step == 0 or not check_due(step) or "train_loss" not in self.first:
            return False
        return self.collective.any(diverging(loss(), self.first["train_loss"]))

    def stop(self, reason: str, epoch: int) -> str:
        """Stop the trial: ``reason`` is ``diverged`` or ``pruned``; returns it."""
        self.outcome.stop(reason, epoch)
        return reason

    def epoch_ended(self, record: EpochMetrics) -> str | None:
        """Record an epoch and apply the rules at its end; returns ``diverged`` or ``pruned`` when the trial stops
        here, else None."""
        self.outcome.history.append(record)
        if self.epoch_diverged(record.metrics):
            return self.stop("diverged", record.epoch)
        prune = self.on_epoch(record) if self.on_epoch is not None and self.collective.rank == 0 else False
        if self.collective.decide(prune):  # rank 0 decides; every rank stops at the same epoch
            return self.stop("pruned", record.epoch)
        return None

    def epoch_diverged(self, metrics: dict[str, float]) -> bool:
        """The rule at an epoch's end (see the class docstring)."""
        objective = self.objective if self.objective in metrics else None
        checked = [metrics[name] for name in ("train_loss", "val_loss", objective) if name in metrics]
        if not all(math.isfinite(value) for value in checked):
            return True
        watched = next((name for name in ("train_loss", "val_loss") if name in metrics),
                       objective if self.minimize else None)
        if watched is None:  # a maximised metric and no loss: only non-finite values count
            return False
        return diverging(metrics[watched], self.first.setdefault(watched, metrics[watched]))


class Collective(Protocol):
    """What a trial needs from its process group; :mod:`lrsearch.distributed.collective` implements it for DDP."""

    rank: int
    world_size: int

    @property
    def broken(self) -> bool:
        """True once no more trials can run in this group (a torchrun rank failed)."""
        ...

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module: ...

    def sum(self, values: Tensor) -> Tensor: ...

    def any(self, flag: bool) -> bool: ...

    def decide(self, flag: bool) -> bool:
        """Rank 0's flag, given to every rank."""
        ...

    def begin_trial(self, config: dict[str, Any], settings: TrialSettings) -> None:
        """Rank 0, before training a trial: tell the other ranks what to train."""
        ...

    def recover(self) -> None:
        """Rank 0, after a trial failed: make the group usable again (restart dead or hung ranks)."""
        ...

    def close(self) -> None:
        """Rank 0, when the study is done: stop the other ranks."""
        ...


class _SingleProcess:
    rank = 0
    world_size = 1
    broken = False

    def begin_trial(self, config: dict[str, Any], settings: TrialSettings) -> None:
        pass

    def recover(self) -> None:
        pass

    def close(self) -> None:
        pass

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def sum(self, values: Tensor) -> Tensor:
        return values

    def any(self, flag: bool) -> bool:
        return flag

    def decide(self, flag: bool) -> bool:
        return flag


SINGLE_PROCESS: Collective = _SingleProcess()
