"""Train K trials as one stacked model: ``lrsearch tune --batch-trials K`` (issue 8).

The K members share the task, its architecture, batch size, epochs and seed, so they see the same batches at every
step, exactly as K sequential trials with that seed would; they may differ in every optimizer hyperparameter, the
optimizer itself and the schedule. One seeded model is built (as :func:`~lrsearch.trial_runner.train_trial` builds
it) and copied K times into one ``[K, P]`` tensor, a row per member; ``torch.func.functional_call`` under
``torch.func.vmap`` runs the K forwards and backwards as one. Members of different optimizers share the stack: their
rows are grouped per optimizer so each group's update is one block (:mod:`lrsearch.batched_optim`).

Every member follows the sequential loop's rules: its own divergence check at the same steps, its own ``on_epoch``
hook (pruning), its own lr schedule (computed by torch's schedulers). A stopped member is dropped from the stack;
members never mix: a NaN in one member's loss or weights reaches no other row.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lrsearch.errors import TrialRuntimeError, UsageError
from lrsearch.studies import PruneSchedule
from lrsearch.trial_runner import CHECK_EVERY, SINGLE_PROCESS, EpochMetrics, TrialOutcome, _batches, _diverging

if TYPE_CHECKING:
    import optuna
    import torch
    from torch import Tensor

    from lrsearch.batched_optim import MemberUpdates
    from lrsearch.tasks import Task
    from lrsearch.trial_runner import TrainData, TrialSettings
    from lrsearch.tuning import Prepared, TuneObserver

IMPLEMENTATION = "vmap"
"""Prefix of a batched trial's ``optimizer_impl``: ``vmap+fused``, ``vmap+stacked`` or ``vmap+<torch impl>``."""


class BatchingError(UsageError):
    """A task or setting that cannot train trials stacked; run it without ``--batch-trials``."""


@dataclass(eq=False)
class _Member:
    index: int
    torch_class: str
    kwargs: dict[str, Any]
    kind: str
    schedule: dict[str, Any]
    lr: float
    on_epoch: Callable[[EpochMetrics], bool] | None
    outcome: TrialOutcome
    lrs: Sequence[float] = ()
    first_loss: float | None = None


def train_trials_batched(
    task: Task,
    data: TrainData,
    configs: Sequence[dict[str, Any]],
    settings: TrialSettings,
    on_epoch: Sequence[Callable[[EpochMetrics], bool] | None] | None = None,
    update: str = "auto",
) -> list[TrialOutcome]:
    """Train every configuration of ``configs`` at once and return each one's outcome, as ``train_trial`` would.

    Args:
        task: The task all members train.
        data: Its tensors on the training device.
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
    if update not in ("auto", "stacked", "torch"):
        raise UsageError(f"update {update!r} is not known (allowed: auto, stacked, torch)")
    if not configs:
        return []
    if len(configs) == 1 and update == "auto":
        from lrsearch.trial_runner import train_trial

        # A stack of one pays vmap's dispatch cost (2-3x a plain step on digits-mlp) for nothing: same result.
        return [train_trial(task, data, configs[0], settings, on_epoch=hooks[0])]
    stack = _prepare_stack(task, data, configs, settings, hooks, update)
    _train(stack, task, data, settings)
    return [m.outcome for m in sorted(stack.all_members, key=lambda m: m.index)]


def time_stacked_steps(task: Task, data: TrainData, batch_size: int, k: int, steps: int = 8) -> float:
    """Seconds for ``steps`` stacked steps of ``k`` members (SGD, lr 0) on real batches, after one warm-up: what
    :func:`~lrsearch.trial_runner.time_training_steps` is to a sequential trial, for picking torch's threads."""
    from lrsearch.trial_runner import TrialSettings, time_steps

    configs = [{"optimizer": "sgd", "params": {"lr": 0.0}, "schedule": {"name": "constant"}}] * k
    stack = _prepare_stack(task, data, configs, TrialSettings(1, batch_size, 0), [None] * k, "auto")
    return time_steps(lambda indices: stack.step(data.train_x[indices], data.train_y[indices], [0.0] * k),
                      len(data.train_x), batch_size, data.train_x.device, steps)


def _prepare_stack(task: Task, data: TrainData, configs: Sequence[dict[str, Any]], settings: TrialSettings,
                   hooks: list[Callable[[EpochMetrics], bool] | None], update: str) -> _Stack:
    """One seeded model copied to every member, members sorted into one block of rows per optimizer."""
    import torch

    from lrsearch.batched_optim import hyperparameters, lr_sequences, make_updates, rule_kind
    from lrsearch.optimizers import constructor, create_optimizer

    device = data.train_x.device
    torch.manual_seed(settings.seed)  # the weights every sequential trial starts from, copied to every member
    model = task.model().to(device)
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if len({(p.dtype, p.device) for _, p in trainable}) != 1:
        raise BatchingError("the task's model must have trainable parameters, all of one dtype and device, to be "
                            "trained stacked (--batch-trials)")
    members = []
    for index, (config, hook) in enumerate(zip(configs, hooks, strict=True)):
        torch_class, kwargs = constructor(config)
        implementation = create_optimizer(torch_class, kwargs, [p for _, p in trainable])[1]
        kind = rule_kind(torch_class, kwargs, implementation)
        if update != "auto" and kind != "torch":
            kind = update
        members.append(_Member(index, torch_class, kwargs, kind, config.get("schedule") or {"name": "constant"},
                               float(hyperparameters(torch_class, kwargs)["lr"]), hook, TrialOutcome(IMPLEMENTATION)))
    steps_per_epoch = math.ceil(len(data.train_x) / settings.batch_size)
    sequences = lr_sequences([(m.schedule, m.lr) for m in members], steps_per_epoch * settings.epochs)
    for member, lrs in zip(members, sequences, strict=True):
        member.lrs = lrs
    members.sort(key=lambda m: (m.torch_class, m.kind, m.index))  # each optimizer's members: one block of rows
    blocks: list[list[_Member]] = []
    for member in members:
        if not blocks or (blocks[-1][0].torch_class, blocks[-1][0].kind) != (member.torch_class, member.kind):
            blocks.append([])
        blocks[-1].append(member)
    rules = [make_updates(b[0].kind, b[0].torch_class, [m.kwargs for m in b]) for b in blocks]
    return _Stack(task, model, trainable, members, rules)


class _Stack:
    """The members' parameters as one ``[K, P]`` tensor (a row per member), its ``[K, ...]`` views per parameter
    that ``vmap`` maps over, every member's gradient as the same ``[K, P]`` layout, and the blocks' updates."""

    def __init__(self, task: Task, model: torch.nn.Module, trainable: list[tuple[str, Tensor]],
                 members: list[_Member], rules: list[MemberUpdates]) -> None:
        import torch
        from torch.func import functional_call, grad_and_value, vmap

        self.all_members, self.members, self.rules = list(members), list(members), rules
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
        for rule in self.rules:
            rule.bind(flat[start:start + len(rule)])
            for member in self.members[start:start + len(rule)]:
                member.outcome.implementation = f"{IMPLEMENTATION}+{rule.implementation}"
            start += len(rule)

    def gradients(self, x: Tensor, y: Tensor) -> Tensor:
        """Every member's gradient of its loss on this batch, into :attr:`grad`; returns the ``[K]`` losses."""
        import torch

        grads, losses = self.grad_and_loss(self.params, self.fixed, x, y)
        torch.cat([g.reshape(len(self.members), -1) for g in grads], dim=1, out=self.grad)
        return losses

    def step(self, x: Tensor, y: Tensor, lrs: list[float]) -> Tensor:
        """One optimizer step of every member on this batch (``lrs``: each member's lr, in row order)."""
        losses = self.gradients(x, y)
        start = 0
        for rule in self.rules:
            rule.step(self.grad[start:start + len(rule)], lrs[start:start + len(rule)])
            start += len(rule)
        return losses

    def drop(self, stopped: list[_Member]) -> None:
        """Remove stopped members: the others' rows, state and hyperparameters move on unchanged."""
        import torch

        keep = [row for row, m in enumerate(self.members) if m not in stopped]
        index = torch.tensor(keep, device=self.flat.device)
        start, rules = 0, []
        for rule in self.rules:
            local = [row - start for row in keep if start <= row < start + len(rule)]
            start += len(rule)
            if local:
                rule.select(local)
                rules.append(rule)
        self.rules, self.members = rules, [self.members[row] for row in keep]
        if self.members:
            self._build(self.flat.index_select(0, index), tuple(t.index_select(0, index) for t in self.fixed))


def _train(stack: _Stack, task: Task, data: TrainData, settings: TrialSettings) -> None:
    import torch

    n_train, step = len(data.train_x), 0
    for epoch in range(settings.epochs):
        started = time.perf_counter()
        stack.model.train()
        loss_sum = torch.zeros(len(stack.members), device=data.train_x.device)
        for indices, _ in _batches(n_train, settings, epoch, SINGLE_PROCESS, data.train_x.device):
            try:
                losses = stack.step(data.train_x[indices], data.train_y[indices], [m.lrs[step] for m in stack.members])
            except RuntimeError as exc:
                if step > 0:
                    raise
                raise BatchingError(f"the task cannot be trained stacked with torch.func.vmap ({exc}); "
                                    "run it without --batch-trials") from exc
            loss_sum += losses * len(indices)
            if step == 0:
                for member, value in zip(stack.members, losses.tolist(), strict=True):
                    member.first_loss = value
            elif step & (step - 1) == 0 or step % CHECK_EVERY == 0:
                values = losses.tolist()
                diverged = [m for m, v in zip(stack.members, values, strict=True) if _diverging(v, m.first_loss)]
                if diverged:
                    for member in diverged:
                        member.outcome.stopped, member.outcome.stopped_epoch = "diverged", epoch
                    loss_sum = loss_sum[[i for i, m in enumerate(stack.members) if m not in diverged]]
                    stack.drop(diverged)
                    if not stack.members:
                        return
            step += 1
        train_seconds = time.perf_counter() - started
        metrics = _evaluate(stack, task, data, settings, loss_sum.tolist(), n_train)
        seconds = time.perf_counter() - started
        stopped = []
        for member, values in sorted(zip(stack.members, metrics, strict=True), key=lambda mv: mv[0].index):
            epoch_metrics = EpochMetrics(epoch, values, member.lrs[step], seconds, n_train / train_seconds)
            member.outcome.history.append(epoch_metrics)
            if _diverging(values["train_loss"], member.first_loss) or not math.isfinite(values["val_loss"]):
                member.outcome.stopped, member.outcome.stopped_epoch = "diverged", epoch
            elif member.on_epoch is not None and member.on_epoch(epoch_metrics):
                member.outcome.stopped, member.outcome.stopped_epoch = "pruned", epoch
            else:
                continue
            stopped.append(member)
        if stopped:
            stack.drop(stopped)
            if not stack.members:
                return


def _evaluate(stack: _Stack, task: Task, data: TrainData, settings: TrialSettings, loss_sums: list[float],
              n_train: int) -> list[dict[str, float]]:
    """Each member's train loss and validation metrics, computed as ``trial_runner._evaluate`` computes them."""
    import torch

    stack.model.eval()
    names = ["val_loss", *(f"val_{name}" for name in task.metrics)]
    totals = [[0.0] * len(names) for _ in stack.members]
    with torch.no_grad():
        for indices in torch.arange(len(data.val_x), device=data.val_x.device).split(settings.eval_batch_size):
            outputs, target = stack.outputs(stack.params, stack.fixed, data.val_x[indices]), data.val_y[indices]
            for row, output in enumerate(outputs):
                values = [task.loss(output, target).item(), *(fn(output, target) for fn in task.metrics.values())]
                totals[row] = [t + float(v) * len(indices) for t, v in zip(totals[row], values, strict=True)]
    return [{"train_loss": loss_sum / n_train, **{name: t / len(data.val_x) for name, t in zip(names, row_totals,
                                                                                             strict=True)}}
            for loss_sum, row_totals in zip(loss_sums, totals, strict=True)]


# -- the study loop ---------------------------------------------------------------------------------------------


def run_study_batched(study: optuna.Study, prepared: Prepared, observers: Sequence[TuneObserver] = (),
                      batch_trials: int = 2) -> None:
    """``run_study`` for ``--batch-trials K``: ask up to K trials, train them stacked, tell each result.

    The budget rule is ``run_study``'s: ``n_trials`` complete + pruned trials in all, never more, shared with any
    other workers; a trial starts only if fewer than ``n_trials`` live or finished trials come before it.
    """
    import optuna

    from lrsearch.tuning import _TAKEN, MAX_CONSECUTIVE_FAILURES, open_slots

    spec, states = prepared.spec, optuna.trial.TrialState
    failures = 0
    for free in open_slots(study, spec.budget):
        _fail_stale_trials(study)  # as study.optimize does before each trial: a dead worker's trials come first
        with warnings.catch_warnings():
            # "Heartbeat of storage is supposed to be used with Study.optimize": _heartbeats keeps it, as optimize does.
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            asked = [study.ask() for _ in range(min(batch_trials, free))]
        live = (states.COMPLETE, states.PRUNED, states.RUNNING, states.WAITING)
        numbers = [t.number for t in study.get_trials(deepcopy=False, states=live)]
        batch = []
        for trial in asked:
            if sum(n < trial.number for n in numbers) >= spec.budget.n_trials:
                trial.set_user_attr("fail_reason", _TAKEN)
                study.tell(trial, state=states.FAIL)
            else:
                batch.append(trial)
        if batch and _run_batch(study, prepared, list(observers), batch):
            failures += 1
            if failures >= MAX_CONSECUTIVE_FAILURES:
                raise TrialRuntimeError(f"{failures} batches of trials in a row failed; last, trials "
                                        f"{[t.number for t in batch]}: {batch[0].user_attrs.get('fail_reason')}")
        elif batch:
            failures = 0


def _run_batch(study: optuna.Study, prepared: Prepared, observers: list[TuneObserver],
               trials: list[optuna.Trial]) -> bool:
    """Sample, train and tell one batch; True when it failed (every trial of it is then FAIL)."""
    import optuna

    from lrsearch.threads import torch_threads
    from lrsearch.trial_runner import TrialSettings

    spec, fail = prepared.spec, optuna.trial.TrialState.FAIL
    space = spec.search.space().with_lr_ranges(study.user_attrs.get("lr_ranges", {}))
    settings = TrialSettings(spec.budget.epochs, spec.train.batch_size, spec.train.seed)
    configs, hooks = [], []
    schedule = PruneSchedule(study.pruner, spec.budget.epochs)
    try:
        for trial in trials:
            config = space.suggest_grid(trial, spec.search.grid_points) if spec.sampler.name == "grid" \
                else space.suggest(trial)
            configs.append(config)
            trial.set_user_attr("config", config)
            trial.set_user_attr("training", {"batch_size": settings.batch_size, "epochs": settings.epochs,
                                             "world_size": 1, "seed": settings.seed, "device": prepared.device,
                                             "threads": torch_threads()})
            trial.set_user_attr("batch", [t.number for t in trials])
            for observer in observers:
                observer.trial_started(trial, config)
            hooks.append(lambda epoch, trial=trial: _report(trial, epoch, spec.objective.metric, observers, schedule))
        with _heartbeats(study, trials):
            outcomes = train_trials_batched(prepared.task, prepared.data, configs, settings, hooks)
    except BaseException as exc:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
        for trial in trials:
            trial.set_user_attr("fail_reason", reason)
            for observer in observers:
                observer.trial_ended(trial, "FAIL", None, exc)
            study.tell(trial, state=fail)
        if isinstance(exc, (KeyboardInterrupt, BatchingError)) or not isinstance(exc, Exception):
            raise
        return True
    worst = math.inf if spec.objective.direction == "minimize" else -math.inf
    for trial, outcome in zip(trials, outcomes, strict=True):
        trial.set_user_attr("optimizer_impl", outcome.implementation)
        trial.set_user_attr("diverged", outcome.diverged)
        for name, value in outcome.final.items():
            trial.set_user_attr(name, value)
        if outcome.diverged:
            trial.report(worst, outcome.stopped_epoch)  # the sampler must learn this region is bad
        state = "PRUNED" if outcome.stopped else "COMPLETE"
        for observer in observers:
            observer.trial_ended(trial, state, outcome, None)
        if outcome.stopped:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, outcome.final[spec.objective.metric])
    return False


def _fail_stale_trials(study: optuna.Study) -> None:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _report(trial: optuna.Trial, epoch: EpochMetrics, metric: str, observers: list[TuneObserver],
            schedule: PruneSchedule) -> bool:
    trial.report(epoch.metrics[metric], epoch.epoch)
    for observer in observers:
        observer.epoch_ended(trial, epoch)
    return schedule.due(trial.number, epoch.epoch) and trial.should_prune()


@contextlib.contextmanager
def _heartbeats(study: optuna.Study, trials: list[optuna.Trial]) -> Iterator[None]:
    """Optuna's heartbeat for each trial of the batch, as ``study.optimize`` keeps one for its trial: without it,
    other workers' stale-trial check would fail a batch that is still training. Optuna has it only privately."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    with contextlib.ExitStack() as stack:
        for trial in trials:
            stack.enter_context(get_heartbeat_thread(trial._trial_id, study._storage))
        yield
