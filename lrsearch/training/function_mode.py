"""Function mode: the trial is the user's own training loop (plain torch, Lightning, Hugging Face, ...).

A study names ``task: {function: "module:train", args: {...}}``. Each trial calls ``train(ctx)`` with a
:class:`TrialContext`: the sampled configuration, builders for the sampled optimizer and schedule, and
``ctx.report(epoch, **metrics)``, which records the epoch exactly as the built-in loop would (Optuna intermediate
value, observers, MLflow) and raises :class:`TrialStopped` when the trial must end (pruned or diverged) so the
user's loop unwinds. :func:`run_function_trial` has the shape of :func:`~lrsearch.training.runner.train_trial`,
so the objective treats both modes alike. ``studies/examples/own_loop.py`` is a complete example.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lrsearch.config.search_space import flat_params
from lrsearch.errors import TaskError, UsageError
from lrsearch.training.trial import EpochMetrics, TrialMonitor, TrialOutcome, TrialSettings

if TYPE_CHECKING:
    import torch

    from lrsearch.config.spec import StudySpec


class ContextError(TaskError):
    """A training function used its trial context wrongly (a report without the objective metric, a value that
    is not a number); every trial would fail the same way, so the study stops."""


class TrialStopped(Exception):
    """Raised by :meth:`TrialContext.report` when the trial must end; let it propagate out of ``train(ctx)``.

    ``reason`` is ``"pruned"`` or ``"diverged"``; ``epoch`` is the epoch whose report stopped the trial.
    """

    def __init__(self, reason: str, epoch: int) -> None:
        super().__init__(f"{reason} at epoch {epoch}")
        self.reason = reason
        self.epoch = epoch


class TrialContext:
    """What ``train(ctx)`` gets: the sampled configuration, the run settings, builders and ``report``.

    Attributes:
        config: The sampled configuration ``{"optimizer", "params": {...}, "schedule": {...}}``, the form
            :func:`lrsearch.build_optimizer` takes and the trial's ``config`` user attr records.
        params: The same, flat: ``{"optimizer": "adamw", "lr": ..., "beta1": ..., "beta2": ..., "eps": ...,
            "weight_decay": ..., "schedule": "cosine"}`` (plus ``warmup_fraction`` for ``warmup_cosine``).
        args: The study's ``task.args``.
        epochs: ``budget.epochs``: how many epochs to train and report.
        batch_size: ``train.batch_size``.
        seed: ``train.seed``; lrsearch has already called ``torch.manual_seed(seed)``, so a model built first
            starts from the same weights in every trial.
        device: The resolved ``train.device``: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: ``train.precision`` (``fp32``, ``bf16`` or ``fp16``), for your loop to apply: lrsearch does
            not own it.
        trial_number: The Optuna trial number (for per-trial output directories), None outside a study.
        implementation: ``fused``/``foreach``/``default`` once :meth:`build_optimizer` ran; ``user`` otherwise.
    """

    def __init__(self, target: str, config: dict[str, Any], args: dict[str, Any], settings: TrialSettings,
                 device: str, metric: str, direction: str, on_epoch: Callable[[EpochMetrics], bool] | None,
                 trial_number: int | None = None) -> None:
        self.config = config
        self.params = flat_params(config)
        self.args = dict(args)
        self.epochs, self.batch_size, self.seed = settings.epochs, settings.batch_size, settings.seed
        self.precision = settings.precision
        self.device = device
        self.trial_number = trial_number
        self.implementation = "user"
        self.stopped: TrialStopped | None = None
        self._target, self._metric = target, metric
        self._monitor = TrialMonitor(FunctionOutcome("user"), on_epoch, objective=metric,
                                     minimize=direction == "minimize")
        self._optimizer: torch.optim.Optimizer | None = None
        self._told_modes = False
        self._steps = 0
        self._last_time = time.perf_counter()

    @property
    def history(self) -> list[EpochMetrics]:
        """The epochs reported so far."""
        return self._monitor.outcome.history

    def __getstate__(self) -> dict[str, Any]:
        # It reports through this process's study: a copy in another process could not, so refuse, in one line.
        raise ContextError(f"the trial context of task.function {self._target!r} cannot be pickled: a trial reports "
                           "from the process lrsearch runs it in (keep ctx out of what is sent to other processes "
                           "or saved, e.g. by Lightning's ddp_spawn or save_hyperparameters(ignore=['ctx']))")

    def build_optimizer(self, parameters: Any, *, steps_per_epoch: int | None = None,
                        hidden_weights: Any = None) -> torch.optim.Optimizer:
        """The sampled optimizer over ``parameters``, fastest implementation first.

        Args:
            parameters: The model, ``model.named_parameters()``, or tensors / param groups. Muon needs the model
                or its named parameters: it updates the hidden 2-D weights (``hidden_weights``: their names, or a
                function of the model; else lrsearch's split rule) and AdamW the rest, as one optimizer.
            steps_per_epoch: Optimizer steps in one epoch; needed by Schedule-Free, whose warm-up is a share of
                the training's steps.

        A Schedule-Free optimizer comes back in train mode and must be in eval mode while you evaluate:
        ``optimizer.eval()`` before, ``optimizer.train()`` after (or ``with ctx.evaluating(model, optimizer):``).

        Example:
            >>> optimizer = ctx.build_optimizer(model)  # doctest: +SKIP
            >>> ctx.implementation  # doctest: +SKIP
            'fused'
        """
        from lrsearch.config.presets import PRESETS
        from lrsearch.errors import UsageError
        from lrsearch.training.optimizers import build

        total = steps_per_epoch * self.epochs if steps_per_epoch else None
        try:
            built = build(self.config, parameters, total, hidden_weights)
        except UsageError as exc:
            raise ContextError(f"ctx.build_optimizer in task.function {self._target!r}: {exc}"
                               + (" (ctx.build_optimizer(model, steps_per_epoch=len(loader)))"
                                  if "warm-up" in str(exc) else "")) from None
        self._optimizer, self.implementation = built.optimizer, built.implementation
        outcome = self._monitor.outcome
        outcome.param_split, outcome.steps_per_epoch = built.param_split, steps_per_epoch or outcome.steps_per_epoch
        if PRESETS[self.config["optimizer"]].modes and not self._told_modes:
            self._told_modes = True
            print(f"lrsearch: trial {self.trial_number}: {self.config['optimizer']} evaluates at its averaged weights:"
                  " call optimizer.eval() before evaluating and optimizer.train() after (or use `with "
                  "ctx.evaluating(model, optimizer):`)", file=sys.stderr)
        return self._optimizer

    @contextlib.contextmanager
    def evaluating(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> Iterator[None]:
        """Evaluate as lrsearch's own loop does: the model in eval mode and the optimizer at the weights it
        evaluates (Schedule-Free's average), both back to training afterwards, gradients off.

        Example:
            >>> with ctx.evaluating(model, optimizer):  # doctest: +SKIP
            ...     val_loss = loss_fn(model(x_val), y_val).item()
        """
        import torch

        from lrsearch.training.optimizers import set_mode

        optimizer = optimizer if optimizer is not None else self._optimizer
        model.eval()
        if optimizer is not None:
            set_mode(optimizer, training=False)
        try:
            with torch.no_grad():
                yield
        finally:
            if optimizer is not None:
                set_mode(optimizer, training=True)
            model.train()

    def build_scheduler(self, optimizer: torch.optim.Optimizer,
                        steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler | None:
        """The sampled schedule over ``steps_per_epoch * epochs`` steps; call ``step()`` after every optimizer
        step. None for ``constant``.

        Example:
            >>> scheduler = ctx.build_scheduler(optimizer, steps_per_epoch=len(loader))  # doctest: +SKIP
        """
        from lrsearch.training.optimizers import make_scheduler

        if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ContextError(f"ctx.build_scheduler: steps_per_epoch {steps_per_epoch!r} must be a positive "
                               "integer (optimizer steps in one epoch)")
        self._monitor.outcome.steps_per_epoch = steps_per_epoch
        return make_scheduler(self.config["schedule"], optimizer, steps_per_epoch * self.epochs)

    def report(self, epoch: int, *, samples: int | None = None, lr: float | None = None, **metrics: Any) -> None:
        """Record one epoch's metrics; raises :class:`TrialStopped` when the trial must end.

        ``metrics`` must include the study's ``objective.metric`` (``val_loss`` ...); values may be floats or
        one-element tensors. ``samples`` (training samples this epoch) gives ``samples_per_second``, NaN
        without it. ``lr`` replaces the lr read from the optimizer :meth:`build_optimizer` made (NaN without
        either). ``epoch_seconds`` is the time since the previous report (the first: since ``train`` started).

        Divergence is the built-in loop's rule: a non-finite ``train_loss``, ``val_loss`` or objective value, or
        a loss above 10x its first reported value (``train_loss`` if reported, else ``val_loss``, else the
        objective when minimised).

        Example:
            >>> ctx.report(epoch, train_loss=0.41, val_loss=0.38, samples=len(train_set))  # doctest: +SKIP
        """
        if self.stopped is not None:
            raise self.stopped  # the loop caught the stop and went on: stop it again
        where = f"ctx.report(epoch={epoch!r}) in task.function {self._target!r}"
        last = self.history[-1].epoch if self.history else -1
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch <= last:
            raise ContextError(f"{where}: epoch must be an integer above the last reported epoch {last} "
                               "(epochs count from 0)")
        values = self._numbers(where, metrics, require_objective=True)
        extra = self._numbers(where, {k: v for k, v in (("samples", samples), ("lr", lr)) if v is not None})
        self._record(epoch, values, extra.get("samples"), extra.get("lr"))

    def check_divergence(self, loss: Any) -> None:
        """The built-in loop's divergence check on one optimizer step's training loss (a float or a one-element
        tensor); call it after every step. The first step's loss is the reference, and later epochs' ``train_loss``
        reports are judged against it too; a tensor is read (one host sync) only at the checked steps, 1, 2, 4,
        8, 16, then every 32. Raises :class:`TrialStopped` ``"diverged"`` at the epoch in progress.

        Example:
            >>> ctx.check_divergence(loss.detach())  # after optimizer.step()  # doctest: +SKIP
        """
        step, self._steps = self._steps, self._steps + 1
        if self.stopped is None:
            if step == 0:
                self._monitor.first_step(float(loss))
            elif self._monitor.step_diverged(step, lambda: float(loss)):
                self._stop("diverged", self.history[-1].epoch + 1 if self.history else 0)
        if self.stopped is not None:
            raise self.stopped

    def _record(self, epoch: int, values: dict[str, float], samples: float | None, lr: float | None) -> None:
        now = time.perf_counter()
        seconds, self._last_time = now - self._last_time, now
        if lr is None:
            lr = self._optimizer.param_groups[0]["lr"] if self._optimizer is not None else math.nan
        rate = samples / seconds if samples is not None and seconds > 0 else math.nan
        reason = self._monitor.epoch_ended(EpochMetrics(epoch, values, float(lr), seconds, rate))
        if reason is not None:
            self.stopped = TrialStopped(reason, epoch)
            raise self.stopped

    def _stop(self, reason: str, epoch: int) -> None:
        self._monitor.stop(reason, epoch)
        self.stopped = TrialStopped(reason, epoch)

    def _numbers(self, where: str, metrics: Mapping[Any, Any], require_objective: bool = False) -> dict[str, float]:
        values: dict[str, float] = {}
        for name, value in metrics.items():
            try:
                values[str(name)] = float(value)
            except (TypeError, ValueError, RuntimeError):
                raise ContextError(f"{where}: {name!r} is {type(value).__name__} {repr(value)[:60]}, expected a "
                                   "number (float, int or one-element tensor)") from None
        if require_objective and self._metric not in values:
            raise ContextError(f"{where}: missing {self._metric!r}, the study's objective.metric "
                               f"(got: {', '.join(values) or 'no metrics'})")
        return values


@dataclass
class FunctionOutcome(TrialOutcome):
    """A :class:`TrialOutcome` whose final metrics include what ``train`` returned (returned values win)."""

    returned: dict[str, float] = field(default_factory=dict)

    @property
    def final(self) -> dict[str, float]:
        return {**(self.history[-1].metrics if self.history else {}), **self.returned}


def run_function_trial(
    function: Callable[[TrialContext], Any],
    spec: StudySpec,
    config: dict[str, Any],
    settings: TrialSettings,
    on_epoch: Callable[[EpochMetrics], bool] | None = None,
    *,
    device: str,
    trial_number: int | None = None,
    pruned_errors: tuple[type[BaseException], ...] = (),
) -> TrialOutcome:
    """Run one trial of ``function`` (function mode), the counterpart of :func:`~lrsearch.training.runner.train_trial`.

    ``on_epoch`` gets each reported epoch and returns True to prune. A report that prunes or diverges raises
    :class:`TrialStopped` inside ``function``; it is caught here and the outcome says ``"pruned"`` or
    ``"diverged"`` at that epoch, even if ``function`` swallowed it and returned. An exception of
    ``pruned_errors`` raised by ``function`` (the study passes ``optuna.TrialPruned``) counts as pruned at its last
    report. If ``function`` never reports, its returned metrics are recorded (and checked, and passed to
    ``on_epoch``) as epoch ``epochs - 1``.

    Raises:
        ContextError: a report or the returned metrics lack the objective metric or hold a non-number, or
            ``function`` returned neither metrics nor reported any.

    Example:
        >>> from lrsearch.config.spec import spec_from_dict
        >>> def train(ctx):
        ...     for epoch in range(ctx.epochs):
        ...         ctx.report(epoch, val_loss=1.0 / (epoch + 1))
        >>> spec = spec_from_dict({"name": "own-loop", "task": {"function": "own_loop:train"}})
        >>> config = {"optimizer": "adam", "params": {"lr": 1e-3}, "schedule": {"name": "constant"}}
        >>> outcome = run_function_trial(train, spec, config, TrialSettings(epochs=3, batch_size=64, seed=0),
        ...                              device="cpu")
        >>> round(outcome.final["val_loss"], 4), outcome.stopped
        (0.3333, None)
    """
    import torch

    target = getattr(spec.task, "function", None) or getattr(function, "__name__", "train")
    ctx = TrialContext(target, config, getattr(spec.task, "args", {}), settings, device, spec.objective.metric,
                       spec.objective.direction, on_epoch, trial_number)
    torch.manual_seed(settings.seed)  # same initial weights in every trial, as in the built-in loop
    returned: Any = None
    try:
        returned = function(ctx)
    except TrialStopped as stop:
        ctx.stopped = ctx.stopped or stop
    except Exception as exc:
        if isinstance(exc, pruned_errors):
            ctx.stopped = TrialStopped("pruned", ctx.history[-1].epoch if ctx.history else 0)
        elif ctx.stopped is None or not _caused_by(exc, ctx.stopped):
            raise  # a framework that wraps our stop in its own exception still stops; anything else fails
    outcome = ctx._monitor.outcome
    outcome.implementation = ctx.implementation
    if ctx.stopped is None:
        final = _returned_metrics(ctx, target, returned)
        if ctx.history:
            outcome.returned = final
        else:
            with contextlib.suppress(TrialStopped):  # the stop is read from ctx below
                ctx._record(settings.epochs - 1, final, None, None)
    if ctx.stopped is not None:
        outcome.stopped, outcome.stopped_epoch = ctx.stopped.reason, ctx.stopped.epoch
    return outcome


def _returned_metrics(ctx: TrialContext, target: str, returned: Any) -> dict[str, float]:
    example = f"{{{ctx._metric!r}: 0.42}}"
    if returned is None:
        if ctx.history:
            return {}
        raise ContextError(f"task.function {target!r} returned None and never called ctx.report (return the "
                           f"final metrics, e.g. {example}, or report every epoch)")
    if not isinstance(returned, Mapping):
        raise ContextError(f"task.function {target!r} returned {type(returned).__name__}, expected a dict of "
                           f"final metrics such as {example} or None")
    # Without reports the returned dict is the only epoch, so it must carry the objective.
    return ctx._numbers(f"the metrics task.function {target!r} returned", returned,
                        require_objective=not ctx.history)


def _caused_by(exc: BaseException | None, stop: TrialStopped) -> bool:
    for _ in range(100):  # a bounded walk: exception chains can form cycles
        if exc is None or exc is stop:
            return exc is stop
        exc = exc.__cause__ or exc.__context__
    return False


def load_function(spec: StudySpec) -> Callable[[TrialContext], Any]:
    """Import ``task.function`` once per process. The study file's own rules for function mode (one process per
    trial, no LR range test) are checked with the study file (:mod:`lrsearch.config.spec`).

    Raises:
        TaskError: the function does not import, is not callable or does not take one argument.
        UsageError: this process is one of torchrun's ranks: a training function runs in one process per trial.

    Example:
        >>> from lrsearch.config.spec import load_spec
        >>> train = load_function(load_spec("studies/examples/own_loop.yaml"))
        >>> train.__name__
        'train'
    """
    from lrsearch.training.devices import torchrun_env
    from lrsearch.training.tasks import import_callable

    target = spec.task.function
    if torchrun_env() is not None:
        raise UsageError(f"task.function {target!r} trains in your own loop, one process per trial: it cannot run "
                         "under torchrun (start DDP inside train() if needed)")
    function = import_callable(target, "task.function", spec.source)
    try:
        inspect.signature(function).bind(None)
    except TypeError:
        raise TaskError(f"task.function {target!r} must take one argument, the trial context "
                        f"(its signature is {inspect.signature(function)})") from None
    except ValueError:
        pass  # no signature to read (a builtin): the first trial will tell
    return function
