"""Train one trial: build the model and optimizer, then train, evaluate and report every epoch.

The loop in :func:`train_trial` reads top to bottom. It knows nothing of Optuna or MLflow: the caller passes an
``on_epoch`` hook that reports and answers whether to stop (pruning). Distributed training enters through a
:class:`~lrsearch.training.trial.Collective`; a single process uses ``SINGLE_PROCESS``.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lrsearch.training.trial import SINGLE_PROCESS, Collective, EpochMetrics, TrialMonitor, TrialOutcome, TrialSettings

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from lrsearch.training.data import TaskData
    from lrsearch.training.tasks import Task


def train_trial(
    task: Task,
    data: TaskData,
    config: dict[str, Any],
    settings: TrialSettings,
    on_epoch: Callable[[EpochMetrics], bool] | None = None,
    collective: Collective = SINGLE_PROCESS,
) -> TrialOutcome:
    """Train ``task`` with the optimizer and schedule in ``config`` and return the per-epoch history.

    ``on_epoch`` gets each epoch's metrics on rank 0 and returns True to stop the trial (pruned); a diverged
    trial (non-finite loss, or loss above 10x its first value) stops at once with ``stopped="diverged"``: the
    rules of :class:`~lrsearch.training.trial.TrialMonitor`. Same config, seed and device give bit-identical metrics
    on CPU.
    """
    import torch

    from lrsearch.training.optimizers import build, make_scheduler, set_mode
    from lrsearch.training.precision import MixedPrecision

    device = data.device
    torch.manual_seed(settings.seed)  # every trial starts from the same weights: a fair comparison of optimizers
    model = collective.wrap(task.model().to(device))
    n_train = data.n_train
    steps_per_epoch = math.ceil(n_train / settings.batch_size)
    built = build(config, model, steps_per_epoch * settings.epochs, task.hidden_weights)
    optimizer = built.optimizer
    # bf16/fp16: autocast on this device for forward and loss; fp16 also scales the loss so small gradients survive.
    amp = MixedPrecision(settings.precision, device, optimizer)
    scheduler = make_scheduler(config["schedule"], optimizer, steps_per_epoch * settings.epochs)
    outcome = TrialOutcome(built.implementation, param_split=built.param_split, steps_per_epoch=steps_per_epoch)
    monitor = TrialMonitor(outcome, on_epoch, collective)
    step = 0

    def finish(stopped: str | None = None, epoch: int = 0) -> TrialOutcome:
        outcome.skipped_steps = amp.skipped_steps()
        if stopped is not None:
            monitor.stop(stopped, epoch)
        return outcome

    for epoch in range(settings.epochs):
        started = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        for inputs, targets, weight in data.train_batches(settings.batch_size, settings.seed, epoch, collective.rank,
                                                          collective.world_size):
            with amp.autocast():
                loss = task.loss(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            # Scaled so DDP's gradient average equals the gradient of the global batch's mean loss.
            amp.backward(loss if weight == 1.0 else loss * weight)
            amp.step(optimizer)  # fp16: a step whose gradients overflow is skipped, which is not divergence
            if scheduler is not None:
                scheduler.step()
            loss_sum += loss.detach() * len(inputs)
            if step == 0:
                monitor.first_step(collective.sum(loss.detach() * weight).item() / collective.world_size)
            elif monitor.step_diverged(step, loss.item):
                return finish("diverged", epoch)
            step += 1
        train_seconds = time.perf_counter() - started
        set_mode(optimizer, training=False)  # Schedule-Free: evaluate at its averaged weights
        metrics = {"train_loss": collective.sum(loss_sum).item() / n_train,
                   **evaluate(task, data, model, settings, collective)}
        set_mode(optimizer, training=True)
        record = EpochMetrics(epoch=epoch, metrics=metrics, lr=optimizer.param_groups[0]["lr"],
                              epoch_seconds=time.perf_counter() - started,
                              samples_per_second=n_train / train_seconds)
        if monitor.epoch_ended(record) is not None:  # diverged, or pruned (every rank stops at the same epoch)
            return finish()
    return finish()


def validation_names(task: Task) -> list[str]:
    """The validation metrics a trial reports, in the order :func:`batch_scores` gives their values."""
    return ["val_loss", *(f"val_{name}" for name in task.metrics)]


def batch_scores(task: Task, output: Tensor, target: Tensor) -> list[float]:
    """The loss and each metric of one validation batch, as means over its samples."""
    return [task.loss(output, target).item(), *(float(fn(output, target)) for fn in task.metrics.values())]


def evaluate(
    task: Task, data: TaskData, model: torch.nn.Module, settings: TrialSettings, collective: Collective
) -> dict[str, float]:
    """Validation loss and metrics over the whole val set: each rank scores its shard, sums are all-reduced."""
    import torch

    from lrsearch.training.precision import autocast

    module = getattr(model, "module", model)  # evaluate outside DDP: no gradient hooks, no sync per forward
    module.eval()
    names = validation_names(task)
    totals = [0.0] * len(names)
    with torch.no_grad():
        for inputs, targets in data.val_batches(settings.eval_batch_size, collective.rank, collective.world_size):
            with autocast(settings.precision, data.device):
                values = batch_scores(task, module(inputs), targets)
            totals = [t + v * len(inputs) for t, v in zip(totals, values, strict=True)]
    summed = collective.sum(torch.tensor(totals, dtype=torch.float64, device=data.device)).tolist()
    return {name: value / data.n_val for name, value in zip(names, summed, strict=True)}


def time_training_steps(task: Task, data: TaskData, batch_size: int, steps: int = 8) -> float:
    """Seconds for ``steps`` forward/backward/SGD steps of the task's model on real batches (after one warm-up)."""
    import torch

    model = task.model().to(data.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: time the work, change nothing that matters

    def step(inputs: Tensor, targets: Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        task.loss(model(inputs), targets).backward()
        optimizer.step()

    return time_steps(step, data, batch_size, steps)


def time_steps(step: Callable[[Tensor, Tensor], None], data: TaskData, batch_size: int, steps: int) -> float:
    """Seconds for ``steps`` calls of ``step(inputs, targets)`` on training batches read beforehand (two, taken in
    turn: a step costs the same on any batch, and a streamed batch is memory held), after one warm-up call."""
    batches = list(itertools.islice(data.cycled_batches(batch_size, 0), 2))
    step(*batches[0])
    started = time.perf_counter()
    for index in range(1, steps + 1):
        step(*batches[index % len(batches)])
    return time.perf_counter() - started
