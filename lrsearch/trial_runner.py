"""Train one trial: build the model and optimizer, then train, evaluate and report every epoch.

The loop in :func:`train_trial` reads top to bottom. It knows nothing of Optuna or MLflow: the caller passes an
``on_epoch`` hook that reports and answers whether to stop (pruning). Distributed training enters through a
:class:`Collective`; a single process uses :data:`SINGLE_PROCESS`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from lrsearch.tasks import Task

DIVERGENCE_FACTOR = 10.0
"""A trial diverges when its loss is non-finite or above this many times its first value."""
CHECK_EVERY = 32
"""Steps between divergence checks (each is one host sync); the first steps, where a too-large lr blows up,
are checked at steps 1, 2, 4, 8 and 16."""


class Collective(Protocol):
    """What the loop needs from the process group; :mod:`lrsearch.distributed` implements it for DDP."""

    rank: int
    world_size: int

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


@dataclass
class TrainData:
    """A task's datasets as tensors on the training device: loaded once per process, batched by index."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor

    @classmethod
    def from_task(cls, task: Task, device: torch.device | str) -> TrainData:
        train_x, train_y = _materialise(task.train)
        val_x, val_y = _materialise(task.val)
        return cls(train_x.to(device), train_y.to(device), val_x.to(device), val_y.to(device))


def _materialise(dataset: Any) -> tuple[Tensor, Tensor]:
    from torch.utils.data import TensorDataset, default_collate

    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return dataset.tensors[0], dataset.tensors[1]
    inputs, targets = default_collate([dataset[i] for i in range(len(dataset))])
    return inputs, targets


@dataclass(frozen=True)
class TrialSettings:
    epochs: int
    batch_size: int
    """Global batch: each of ``world_size`` ranks trains on its slice of it."""
    seed: int
    eval_batch_size: int = 4096


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
    history: list[EpochMetrics] = field(default_factory=list)
    stopped: str | None = None
    """``None`` when all epochs ran, ``"pruned"`` or ``"diverged"`` otherwise."""
    stopped_epoch: int | None = None

    @property
    def diverged(self) -> bool:
        return self.stopped == "diverged"

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1].metrics if self.history else {}


def train_trial(
    task: Task,
    data: TrainData,
    config: dict[str, Any],
    settings: TrialSettings,
    on_epoch: Callable[[EpochMetrics], bool] | None = None,
    collective: Collective = SINGLE_PROCESS,
) -> TrialOutcome:
    """Train ``task`` with the optimizer and schedule in ``config`` and return the per-epoch history.

    ``on_epoch`` gets each epoch's metrics on rank 0 and returns True to stop the trial (pruned); a diverged
    trial (non-finite loss, or loss above 10x its first value) stops at once with ``stopped="diverged"``.
    Same config, seed and device give bit-identical metrics on CPU.
    """
    import torch

    from lrsearch.optimizers import constructor, create_optimizer, make_scheduler

    device = data.train_x.device
    torch.manual_seed(settings.seed)  # every trial starts from the same weights: a fair comparison of optimizers
    model = collective.wrap(task.model().to(device))
    torch_class, kwargs = constructor(config)
    optimizer, implementation = create_optimizer(torch_class, kwargs, model.parameters())
    n_train = len(data.train_x)
    steps_per_epoch = math.ceil(n_train / settings.batch_size)
    scheduler = make_scheduler(config["schedule"], optimizer, steps_per_epoch * settings.epochs)
    outcome = TrialOutcome(implementation)
    first_loss: float | None = None
    step = 0

    for epoch in range(settings.epochs):
        started = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        for indices, weight in _batches(n_train, settings, epoch, collective, device):
            loss = task.loss(model(data.train_x[indices]), data.train_y[indices])
            optimizer.zero_grad(set_to_none=True)
            # Scaled so DDP's gradient average equals the gradient of the global batch's mean loss.
            (loss if weight == 1.0 else loss * weight).backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            loss_sum += loss.detach() * len(indices)
            if first_loss is None:
                first_loss = collective.sum(loss.detach() * weight).item() / collective.world_size
            elif (step & (step - 1) == 0 or step % CHECK_EVERY == 0) and \
                    collective.any(_diverging(loss.item(), first_loss)):
                outcome.stopped, outcome.stopped_epoch = "diverged", epoch
                return outcome
            step += 1
        train_seconds = time.perf_counter() - started
        metrics = {"train_loss": collective.sum(loss_sum).item() / n_train, **_evaluate(task, data, model,
                                                                                        settings, collective)}
        epoch_metrics = EpochMetrics(
            epoch=epoch,
            metrics=metrics,
            lr=optimizer.param_groups[0]["lr"],
            epoch_seconds=time.perf_counter() - started,
            samples_per_second=n_train / train_seconds,
        )
        outcome.history.append(epoch_metrics)
        if _diverging(metrics["train_loss"], first_loss) or not math.isfinite(metrics["val_loss"]):
            outcome.stopped, outcome.stopped_epoch = "diverged", epoch
            return outcome
        stop = on_epoch(epoch_metrics) if on_epoch is not None and collective.rank == 0 else False
        if collective.decide(stop):  # rank 0 decides; every rank stops at the same epoch
            outcome.stopped, outcome.stopped_epoch = "pruned", epoch
            return outcome
    return outcome


def time_training_steps(task: Task, data: TrainData, batch_size: int, steps: int = 8) -> float:
    """Seconds for ``steps`` forward/backward/SGD steps of the task's model on real batches (after one warm-up)."""
    import torch

    model = task.model().to(data.train_x.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: time the work, change nothing that matters

    def step(indices: Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        task.loss(model(data.train_x[indices]), data.train_y[indices]).backward()
        optimizer.step()

    return time_steps(step, len(data.train_x), batch_size, data.train_x.device, steps)


def time_steps(step: Callable[[Tensor], None], n: int, batch_size: int, device: Any, steps: int) -> float:
    """Seconds for ``steps`` calls of ``step(batch_indices)`` over consecutive batches, after one warm-up call."""
    import torch

    batches = torch.arange(n, device=device).split(batch_size)
    step(batches[0])
    started = time.perf_counter()
    for index in range(1, steps + 1):
        step(batches[index % len(batches)])
    return time.perf_counter() - started


def _diverging(loss: float, first_loss: float | None) -> bool:
    return not math.isfinite(loss) or (first_loss is not None and loss > DIVERGENCE_FACTOR * abs(first_loss))


def _batches(n: int, settings: TrialSettings, epoch: int, collective: Collective, device: torch.device):
    """This rank's slice of each global batch, and the weight that makes the DDP average exact.

    The shuffle depends only on (seed, epoch), so every rank and every world size sees the same global batches.
    """
    import torch

    generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator).to(device)
    world = collective.world_size
    for start in range(0, n, settings.batch_size):
        global_batch = order[start : start + settings.batch_size]
        if world == 1:
            yield global_batch, 1.0
        elif len(global_batch) >= world:
            mine = global_batch.tensor_split(world)[collective.rank]
            yield mine, len(mine) * world / len(global_batch)


def _evaluate(
    task: Task, data: TrainData, model: torch.nn.Module, settings: TrialSettings, collective: Collective
) -> dict[str, float]:
    """Validation loss and metrics over the whole val set: each rank scores its shard, sums are all-reduced."""
    import torch

    module = getattr(model, "module", model)  # evaluate outside DDP: no gradient hooks, no sync per forward
    module.eval()
    names = ["val_loss", *(f"val_{name}" for name in task.metrics)]
    shard = torch.arange(len(data.val_x), device=data.val_x.device).tensor_split(collective.world_size)
    totals = [0.0] * len(names)
    with torch.no_grad():
        for indices in shard[collective.rank].split(settings.eval_batch_size):
            output, target = module(data.val_x[indices]), data.val_y[indices]
            values = [task.loss(output, target).item(), *(fn(output, target) for fn in task.metrics.values())]
            totals = [t + float(v) * len(indices) for t, v in zip(totals, values, strict=True)]
    summed = collective.sum(torch.tensor(totals, dtype=torch.float64, device=data.val_x.device)).tolist()
    return {name: value / len(data.val_x) for name, value in zip(names, summed, strict=True)}
