"""Train K trials as one stacked model: ``lrsearch tune --batch-trials K``.

The K members share the task, its architecture, batch size, epochs and seed, so they see the same batches at every
step, exactly as K sequential trials with that seed would; they may differ in every optimizer hyperparameter, the
optimizer itself and the schedule. One seeded model is built (as :func:`~lrsearch.training.runner.train_trial`
builds it) and copied K times into one ``[K, P]`` tensor, a row per member; ``torch.func.functional_call`` under
``torch.func.vmap`` runs the K forwards and backwards as one. Members of different optimizers share the stack: their
rows are grouped per optimizer so each group's update is one block (:mod:`lrsearch.training.batched_updates`).

Every member follows the sequential loop's rules (a :class:`~lrsearch.training.trial.TrialMonitor` each): its own
divergence check at the same steps, its own ``on_epoch`` hook (pruning), its own lr schedule (computed by torch's
schedulers). A stopped member is dropped from the stack;
members never mix: a NaN in one member's loss or weights reaches no other row.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lrsearch.errors import TaskError, UsageError
from lrsearch.training.runner import batch_scores, validation_names
from lrsearch.training.trial import EpochMetrics, TrialMonitor, TrialOutcome, TrialSettings, check_due

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from lrsearch.training.batched_updates import MemberUpdates
    from lrsearch.training.data import TaskData
    from lrsearch.training.tasks import Task

IMPLEMENTATION = "vmap"
"""Prefix of a batched trial's ``optimizer_impl``: ``vmap+fused``, ``vmap+stacked`` or ``vmap+<torch impl>``."""
UPDATES = ("auto", "stacked", "torch")


class BatchingError(TaskError):
    """A task or setting that cannot train trials stacked; run it without ``--batch-trials``."""


@dataclass(eq=False)
class Member:
    """One trial of the stack: its optimizer, the update that computes its steps, its schedule and its outcome."""

    index: int
    torch_class: str
    kwargs: dict[str, Any]
    update: str
    """How its steps are computed: ``fused``, ``stacked`` or ``torch`` (see ``batched_updates.choose_update``)."""
    schedule: dict[str, Any]
    lr: float
    monitor: TrialMonitor
    """Its stop rules (the sequential trial's) and its outcome."""
    lrs: Sequence[float] = ()

    @property
    def outcome(self) -> TrialOutcome:
        return self.monitor.outcome


def train_trials_batched(
    task: Task,
    data: TaskData,
    configs: Sequence[dict[str, Any]],
    settings: TrialSettings,
    on_epoch: Sequence[Callable[[EpochMetrics], bool] | None] | None = None,
    update: str = "auto",
) -> list[TrialOutcome]:
    """Train every configuration of ``configs`` at once and return each one's outcome, as ``train_trial`` would.

    Args:
        task: The task all members train.
        data: Its data: tensors on the training device, or a stream.
        configs: One trial configuration per member (``{"optimizer", "params", "schedule"}``).
        settings: Epochs, batch size and seed, shared by every member.
        on_epoch: Per member, the hook that gets its epoch metrics and returns True to prune it.
        update: ``auto`` (the implementation sequential trials get: torch's fused kernel per member where it has
            one), ``stacked`` (broadcast math for every optimizer it covers) or ``torch`` (a torch optimizer per
            member).

    Returns:
        The members' outcomes, in the order of ``configs``; ``implementation`` is ``vmap+<update>`` (a single
        configuration trains as ``train_trial`` trains it, with its implementation).

    Raises:
        BatchingError: the task's model cannot be stacked (parameters of several dtypes or devices, a forward that
            ``vmap`` cannot run).
    """
    hooks = list(on_epoch) if on_epoch is not None else [None] * len(configs)
    if len(hooks) != len(configs):
        raise UsageError(f"train_trials_batched: {len(configs)} configs but {len(hooks)} on_epoch hooks")
    if update not in UPDATES:
        raise UsageError(f"update {update!r} is not known (allowed: {', '.join(UPDATES)})")
    if settings.precision != "fp32":
        raise UsageError(f"stacked trials train in fp32 (got precision {settings.precision!r})")
    if not configs:
        return []
    if len(configs) == 1 and update == "auto":
        from lrsearch.training.runner import train_trial

        # A stack of one pays vmap's dispatch cost (2-3x a plain step on digits-mlp) for nothing: same result.
        return [train_trial(task, data, configs[0], settings, on_epoch=hooks[0])]
    stack = prepare_stack(task, data, configs, settings, hooks, update)
    _train(stack, task, data, settings)
    return [m.outcome for m in sorted(stack.all_members, key=lambda m: m.index)]


def time_stacked_steps(task: Task, data: TaskData, batch_size: int, k: int, steps: int = 8) -> float:
    """Seconds for ``steps`` stacked steps of ``k`` members (SGD, lr 0) on real batches, after one warm-up: what
    :func:`~lrsearch.training.runner.time_training_steps` is to a sequential trial, for picking torch's threads."""
    from lrsearch.training.runner import time_steps

    configs = [{"optimizer": "sgd", "params": {"lr": 0.0}, "schedule": {"name": "constant"}}] * k
    stack = prepare_stack(task, data, configs, TrialSettings(1, batch_size, 0), [None] * k, "auto")
    return time_steps(lambda inputs, targets: stack.step(inputs, targets, [0.0] * k), data, batch_size, steps)


def prepare_stack(task: Task, data: TaskData, configs: Sequence[dict[str, Any]], settings: TrialSettings,
                  hooks: list[Callable[[EpochMetrics], bool] | None], update: str) -> Stack:
    """One seeded model copied to every member, members sorted into one block of rows per optimizer."""
    import torch

    from lrsearch.config.presets import PRESETS
    from lrsearch.training.batched_updates import choose_update, hyperparameters, lr_sequences, make_updates
    from lrsearch.training.optimizers import constructor, create_optimizer

    device = data.device
    torch.manual_seed(settings.seed)  # the weights every sequential trial starts from, copied to every member
    model = task.model().to(device)
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if len({(p.dtype, p.device) for _, p in trainable}) != 1:
        raise BatchingError("the task's model must have trainable parameters, all of one dtype and device, to be "
                            "trained stacked (--batch-trials)")
    members = []
    steps_per_epoch = math.ceil(data.n_train / settings.batch_size)
    for index, (config, hook) in enumerate(zip(configs, hooks, strict=True)):
        if not PRESETS[config["optimizer"]].stackable:  # the study file refuses it first; here for direct calls
            raise BatchingError(f"{config['optimizer']} cannot train stacked: "
                                f"{PRESETS[config['optimizer']].not_stackable_because}")
        made = constructor(config, steps_per_epoch * settings.epochs)
        torch_class, kwargs = made.torch_class, made.kwargs
        implementation = create_optimizer(torch_class, kwargs, [p for _, p in trainable])[1]
        chosen = choose_update(torch_class, kwargs, implementation)
        if update != "auto" and chosen != "torch":
            chosen = update
        members.append(Member(index, torch_class, kwargs, chosen, config.get("schedule") or {"name": "constant"},
                              float(hyperparameters(torch_class, kwargs)["lr"]),
                              TrialMonitor(TrialOutcome(IMPLEMENTATION, steps_per_epoch=steps_per_epoch), hook)))
    sequences = lr_sequences([(m.schedule, m.lr) for m in members], steps_per_epoch * settings.epochs)
    for member, lrs in zip(members, sequences, strict=True):
        member.lrs = lrs
    members.sort(key=lambda m: (m.torch_class, m.update, m.index))  # each optimizer's members: one block of rows
    blocks: list[list[Member]] = []
    for member in members:
        if not blocks or (blocks[-1][0].torch_class, blocks[-1][0].update) != (member.torch_class, member.update):
            blocks.append([])
        blocks[-1].append(member)
    updates = [make_updates(b[0].update, b[0].torch_class, [m.kwargs for m in b]) for b in blocks]
    return Stack(task, model, trainable, members, updates)


class Stack:
    """The members' parameters as one ``[K, P]`` tensor (a row per member), its ``[K, ...]`` views per parameter
    that ``vmap`` maps over, every member's gradient as the same ``[K, P]`` layout, and the blocks' updates."""

    def __init__(self, task: Task, model: torch.nn.Module, trainable: list[tuple[str, Tensor]],
                 members: list[Member], updates: list[MemberUpdates]) -> None:
        import torch
        from torch.func import functional_call, grad_and_value, vmap

        self.all_members, self.members, self.updates = list(members), list(members), updates
        self.names = [name for name, _ in trainable]
        self.shapes = [p.shape for _, p in trainable]
        names = set(self.names)
        # Frozen parameters and buffers: a copy per member, not optimized (a member may still change its own).
        fixed = [(n, t) for n, t in [*model.named_parameters(), *model.named_buffers()] if n not in names]
        self.fixed_names = [n for n, _ in fixed]
        k = len(members)
        flat = torch.cat([p.detach().reshape(-1) for _, p in trainable]).unsqueeze(0).repeat(k, 1)
        fixed_tensors = tuple(t.detach().unsqueeze(0).repeat(k, *([1] * t.dim())) for _, t in fixed)
        tied = len(list(model.named_parameters(remove_duplicate=False))) != len(list(model.named_parameters()))

        def outputs(params: tuple[Tensor, ...], fixed: tuple[Tensor, ...], x: Tensor) -> Tensor:
            state = dict(zip(self.names, params, strict=True))
            state.update(zip(self.fixed_names, fixed, strict=True))
            return functional_call(model, state, (x,), tie_weights=tied, strict=False)

        def loss(params: tuple[Tensor, ...], fixed: tuple[Tensor, ...], x: Tensor, y: Tensor) -> Tensor:
            return task.loss(outputs(params, fixed, x), y)

        # Gradients are taken inside vmap (per member, as torch.func.grad sees one model), not by autograd over the
        # stacked forward: autograd then picks the same matmul orientation for each weight's gradient as in a
        # sequential trial, so on one thread the gradients are bit-identical to it (autograd over the stacked
        # forward multiplies a weight's gradient in the other order: 1 ulp off, which a ReLU flip grows to 1e-2).
        # No member's gradient can touch another's either way.
        # randomness="same": one dropout mask for all members, drawn from the global generator as one model's
        # forward draws it, so members see the masks their sequential trials see.
        self.grad_and_loss = vmap(grad_and_value(loss), in_dims=(0, 0, None, None), randomness="same")
        self.outputs = vmap(outputs, in_dims=(0, 0, None), randomness="same")
        self.model = model
        self._build(flat, fixed_tensors)

    def _build(self, flat: Tensor, fixed: tuple[Tensor, ...]) -> None:
        import torch

        self.flat, self.grad, self.fixed = flat, torch.empty_like(flat), fixed
        k, params, offset = flat.shape[0], [], 0
        for shape in self.shapes:
            size = math.prod(shape)
            params.append(flat[:, offset:offset + size].view(k, *shape))
            offset += size
        self.params = tuple(params)
        start = 0
        for update in self.updates:
            update.bind(flat[start:start + len(update)])
            for member in self.members[start:start + len(update)]:
                member.outcome.implementation = f"{IMPLEMENTATION}+{update.implementation}"
            start += len(update)

    def gradients(self, x: Tensor, y: Tensor) -> Tensor:
        """Every member's gradient of its loss on this batch, into :attr:`grad`; returns the ``[K]`` losses."""
        import torch

        grads, losses = self.grad_and_loss(self.params, self.fixed, x, y)
        torch.cat([g.reshape(len(self.members), -1) for g in grads], dim=1, out=self.grad)
        return losses

    def set_mode(self, training: bool) -> None:
        """Train or eval mode for the members whose optimizers have modes (Schedule-Free)."""
        for update in self.updates:
            update.set_mode(training)

    def step(self, x: Tensor, y: Tensor, lrs: list[float]) -> Tensor:
        """One optimizer step of every member on this batch (``lrs``: each member's lr, in row order)."""
        losses = self.gradients(x, y)
        start = 0
        for update in self.updates:
            update.step(self.grad[start:start + len(update)], lrs[start:start + len(update)])
            start += len(update)
        return losses

    def drop(self, stopped: list[Member]) -> None:
        """Remove stopped members: the others' rows, state and hyperparameters move on unchanged."""
        import torch

        keep = [row for row, m in enumerate(self.members) if m not in stopped]
        index = torch.tensor(keep, device=self.flat.device)
        start, updates = 0, []
        for update in self.updates:
            local = [row - start for row in keep if start <= row < start + len(update)]
            start += len(update)
            if local:
                update.select(local)
                updates.append(update)
        self.updates, self.members = updates, [self.members[row] for row in keep]
        if self.members:
            self._build(self.flat.index_select(0, index), tuple(t.index_select(0, index) for t in self.fixed))


def _train(stack: Stack, task: Task, data: TaskData, settings: TrialSettings) -> None:
    import torch

    n_train, step, device = data.n_train, 0, data.device
    for epoch in range(settings.epochs):
        started = time.perf_counter()
        stack.model.train()
        loss_sum = torch.zeros(len(stack.members), device=device)
        for inputs, targets, _ in data.train_batches(settings.batch_size, settings.seed, epoch, 0, 1):
            losses = _step(stack, inputs, targets, [m.lrs[step] for m in stack.members], step)
            loss_sum += losses * len(inputs)
            if step == 0:
                for member, value in zip(stack.members, losses.tolist(), strict=True):
                    member.monitor.first_step(value)
            elif check_due(step):
                loss_sum = _drop_diverged(stack, losses.tolist(), loss_sum, epoch, step)
                if not stack.members:
                    return
            step += 1
        train_seconds = time.perf_counter() - started
        stack.set_mode(training=False)  # Schedule-Free members evaluate at their averaged weights
        metrics = _evaluate(stack, task, data, settings, loss_sum.tolist(), n_train)
        stack.set_mode(training=True)
        seconds = time.perf_counter() - started
        stopped = []
        for member, values in sorted(zip(stack.members, metrics, strict=True), key=lambda mv: mv[0].index):
            record = EpochMetrics(epoch, values, member.lrs[step], seconds, n_train / train_seconds)
            if member.monitor.epoch_ended(record) is not None:
                stopped.append(member)
        if stopped:
            stack.drop(stopped)
            if not stack.members:
                return


def _step(stack: Stack, inputs: Tensor, targets: Tensor, lrs: list[float], step: int) -> Tensor:
    """One stacked optimizer step; the first one tells a model that ``vmap`` cannot run from a real failure."""
    try:
        return stack.step(inputs, targets, lrs)
    except RuntimeError as exc:
        if step > 0:
            raise
        raise BatchingError(f"the task cannot be trained stacked with torch.func.vmap ({exc}); "
                            "run it without --batch-trials") from exc


def _drop_diverged(stack: Stack, losses: list[float], loss_sum: Tensor, epoch: int, step: int) -> Tensor:
    """Stop and drop the members whose loss diverges; returns the epoch's loss sums of the members left."""
    diverged = [m for m, v in zip(stack.members, losses, strict=True)
                if m.monitor.step_diverged(step, lambda v=v: v)]
    if not diverged:
        return loss_sum
    for member in diverged:
        member.monitor.stop("diverged", epoch)
    loss_sum = loss_sum[[i for i, m in enumerate(stack.members) if m not in diverged]]
    stack.drop(diverged)
    return loss_sum


def _evaluate(stack: Stack, task: Task, data: TaskData, settings: TrialSettings, loss_sums: list[float],
              n_train: int) -> list[dict[str, float]]:
    """Each member's train loss and validation metrics, computed as :func:`~lrsearch.training.runner.evaluate`
    computes them for one model."""
    import torch

    stack.model.eval()
    names = validation_names(task)
    totals = [[0.0] * len(names) for _ in stack.members]
    with torch.no_grad():
        for inputs, target in data.val_batches(settings.eval_batch_size, 0, 1):
            for row, output in enumerate(stack.outputs(stack.params, stack.fixed, inputs)):
                values = batch_scores(task, output, target)
                totals[row] = [t + v * len(inputs) for t, v in zip(totals[row], values, strict=True)]
    return [{"train_loss": loss_sum / n_train, **{name: t / data.n_val for name, t in zip(names, row_totals,
                                                                                         strict=True)}}
            for loss_sum, row_totals in zip(loss_sums, totals, strict=True)]
