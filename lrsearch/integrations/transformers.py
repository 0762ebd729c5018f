"""The Hugging Face ``Trainer`` in function mode: train with the trial's optimizer and schedule.

Three additions to an ordinary ``Trainer`` script (``studies/examples/transformers_digits.py`` is a complete one)::

    from lrsearch.integrations.transformers import TrialCallback, trial_arguments, trial_optimizers

    args = TrainingArguments(output_dir="hf-trials", **trial_arguments(ctx))
    trainer = Trainer(model, args, train_dataset=train, eval_dataset=val, callbacks=[TrialCallback(ctx)],
                      optimizers=trial_optimizers(ctx, model, args, train))

- :func:`trial_arguments` sets the trial's budget (``num_train_epochs=ctx.epochs``), batch size, seed and device,
  and one evaluation and one training-loss log per epoch.
- :func:`trial_optimizers` is the ``optimizers=(optimizer, scheduler)`` pair: ``ctx.build_optimizer`` over the
  model's parameters and ``ctx.build_scheduler`` over the Trainer's optimizer steps per epoch, stepped once per
  optimizer step as the Trainer does (``constant`` is a constant scheduler, so the Trainer adds none of its own).
- :class:`TrialCallback` reports each epoch's evaluation (``eval_loss`` as ``val_loss``, ``eval_<m>`` as ``val_<m>``,
  the epoch's logged ``loss`` as ``train_loss``), checks each step's loss (the model's output ``loss``) for
  divergence as the built-in loop does, and sets ``control.should_training_stop`` when the trial is pruned or
  diverged: ``train()`` returns at that epoch and the trial is PRUNED with its reason. Logging integrations and
  checkpoints stay as the ``TrainingArguments`` say.

DDP: a trial trains in one process. A ``Trainer`` spreads over every visible GPU of that process by itself
(``torch.nn.DataParallel``; ``args.train_batch_size`` counts them all), which works; a multi-process launch
(``torchrun``, ``accelerate launch``) is refused, by function mode at start and by the callback at ``train()``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from lrsearch.integrations import budget_problem, report_to_trial, require
from lrsearch.training.function_mode import ContextError, TrialStopped

transformers = require("transformers", "transformers", __name__)

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

    from lrsearch.training.function_mode import TrialContext

__all__ = ["TrialCallback", "trial_arguments", "trial_optimizers"]

NOT_REPORTED = {"epoch", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}


def trial_arguments(ctx: TrialContext) -> dict[str, Any]:
    """``TrainingArguments`` keyword arguments for the trial: its epoch budget, batch size, seed and device, and one
    evaluation and one training-loss log per epoch (what :class:`TrialCallback` reports).

    Example:
        >>> args = TrainingArguments("hf-trials", save_strategy="no", **trial_arguments(ctx))  # doctest: +SKIP
    """
    # logging_nan_inf_filter off: the Trainer would otherwise leave non-finite losses out of the logged train loss.
    return {"num_train_epochs": ctx.epochs, "per_device_train_batch_size": ctx.batch_size, "seed": ctx.seed,
            "eval_strategy": "epoch", "logging_strategy": "epoch", "logging_nan_inf_filter": False,
            "use_cpu": ctx.device == "cpu"}


def steps_per_epoch(args: transformers.TrainingArguments, samples: int) -> int:
    """Optimizer steps per epoch over ``samples`` training samples, counted as the Trainer counts them."""
    batch = args.train_batch_size
    batches = samples // batch if args.dataloader_drop_last else math.ceil(samples / batch)
    return max(math.ceil(batches / args.gradient_accumulation_steps), 1)


def trial_optimizers(ctx: TrialContext, model: torch.nn.Module, args: transformers.TrainingArguments,
                     train_dataset: Dataset) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """``Trainer(optimizers=...)``: the trial's optimizer over ``model``'s parameters and its schedule.

    The model is moved to ``args.device`` first: the Trainer refuses an optimizer whose parameters live on another
    device than the model.

    Example:
        >>> trainer = Trainer(model, args, train_dataset=train, eval_dataset=val,  # doctest: +SKIP
        ...                   callbacks=[TrialCallback(ctx)], optimizers=trial_optimizers(ctx, model, args, train))
    """
    from torch.optim.lr_scheduler import ConstantLR

    model.to(args.device)
    steps = steps_per_epoch(args, len(train_dataset))  # type: ignore[arg-type]
    # The model itself: Muon tells its hidden weights from the rest by name. The Trainer switches a Schedule-Free
    # optimizer to eval mode to evaluate, and back to train mode to train, by itself.
    optimizer = ctx.build_optimizer(model, steps_per_epoch=steps)
    scheduler = ctx.build_scheduler(optimizer, steps)
    # None would make the Trainer build its own (linear decay by default): constant must be a scheduler too.
    return optimizer, scheduler or ConstantLR(optimizer, factor=1.0, total_iters=0)


class TrialCallback(transformers.TrainerCallback):
    """Reports each epoch's evaluation to the trial and stops training when the trial is pruned or diverged.

    Args:
        ctx: The trial's context, as ``train(ctx)`` received it.

    Example:
        >>> trainer = Trainer(model, args, ..., callbacks=[TrialCallback(ctx)],  # doctest: +SKIP
        ...                   optimizers=trial_optimizers(ctx, model, args, train))
        >>> trainer.train()  # returns at the pruned epoch  # doctest: +SKIP
    """

    def __init__(self, ctx: TrialContext) -> None:
        self.ctx = ctx
        self._training = False
        self._train_loss: float | None = None
        self._samples: int | None = None
        self._step_loss: torch.Tensor | None = None
        self._hook: torch.utils.hooks.RemovableHandle | None = None

    def on_train_begin(self, args: transformers.TrainingArguments, state: transformers.TrainerState,
                       control: transformers.TrainerControl, **kwargs: Any) -> None:
        problems = [budget_problem(self.ctx, "TrainingArguments", "num_train_epochs", args.num_train_epochs,
                                   args.max_steps)]
        if args.world_size > 1:
            problems.append(f"training runs over {args.world_size} processes, and a trial trains in one "
                            "(allowed: one process; use lrsearch tune --workers N for parallel trials)")
        strategy = str(getattr(args.eval_strategy, "value", args.eval_strategy))  # an IntervalStrategy enum
        if strategy != "epoch":
            problems.append(f"TrainingArguments(eval_strategy={strategy!r}): a trial reports once per epoch "
                            "(allowed: 'epoch'; trial_arguments(ctx) sets it)")
        if self.ctx.implementation == "user":
            problems.append("the Trainer's optimizer is not the trial's (pass optimizers=trial_optimizers(ctx, "
                            "model, args, train_dataset) to the Trainer)")
        problems.append(self._schedule_problem(args, kwargs.get("train_dataloader")))
        found = [problem for problem in problems if problem]
        if found:
            raise ContextError(f"{__name__}: {'; '.join(found)}")
        self._training, self._train_loss = True, None
        model = kwargs.get("model")
        if model is not None:
            self._hook = model.register_forward_hook(self._keep_loss)

    def _keep_loss(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        """The model's own loss of each training forward pass (a model given labels returns it): the step's loss
        for the divergence check. The Trainer logs its losses only every ``logging_steps``."""
        loss = getattr(output, "loss", None)
        if module.training and loss is not None:
            self._step_loss = loss.detach()

    def on_step_end(self, args: transformers.TrainingArguments, state: transformers.TrainerState,
                    control: transformers.TrainerControl, **kwargs: Any) -> None:
        loss, self._step_loss = self._step_loss, None
        if loss is None or self.ctx.stopped is not None:
            return
        try:
            self.ctx.check_divergence(loss)
        except TrialStopped:
            control.should_training_stop = True  # the epoch's evaluation still runs and reports nothing more

    def _schedule_problem(self, args: transformers.TrainingArguments, loader: Any) -> str | None:
        """The schedule was planned from the dataset's length: the Trainer's dataloader must step as often."""
        dataset = getattr(loader, "dataset", None)
        try:
            samples, batches = len(dataset), len(loader)  # type: ignore[arg-type]
        except TypeError:
            return None  # nothing to compare with: trial_optimizers already needed a sized train_dataset
        self._samples = samples
        planned = steps_per_epoch(args, samples)
        actual = max(math.ceil(batches / args.gradient_accumulation_steps), 1)
        if planned == actual:
            return None
        return (f"the Trainer takes {actual} optimizer steps per epoch and the schedule was planned for {planned} "
                "(build trial_optimizers with the Trainer's own args and train_dataset)")

    def on_log(self, args: transformers.TrainingArguments, state: transformers.TrainerState,
               control: transformers.TrainerControl, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if self._training and logs and "loss" in logs:
            self._train_loss = logs["loss"]

    def on_evaluate(self, args: transformers.TrainingArguments, state: transformers.TrainerState,
                    control: transformers.TrainerControl, metrics: dict[str, Any] | None = None,
                    **kwargs: Any) -> None:
        if not self._training:
            return  # trainer.evaluate() after training: the trial's epochs are already reported
        values = {_lrsearch_name(name): value for name, value in (metrics or {}).items() if name not in NOT_REPORTED}
        if self._train_loss is not None:
            values["train_loss"], self._train_loss = self._train_loss, None
        epoch = max(round(state.epoch or 0.0) - 1, 0)  # state.epoch is the float count of epochs done
        if report_to_trial(self.ctx, epoch, values, self._samples):
            control.should_training_stop = True

    def on_train_end(self, args: transformers.TrainingArguments, state: transformers.TrainerState,
                     control: transformers.TrainerControl, **kwargs: Any) -> None:
        self._training = False
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


def _lrsearch_name(name: str) -> str:
    """The Trainer's metric names in lrsearch's words: ``eval_loss`` is ``val_loss``, ``eval_f1`` is ``val_f1``."""
    return "val_" + name.removeprefix("eval_") if name.startswith("eval_") else name
