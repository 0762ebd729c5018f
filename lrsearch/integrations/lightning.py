"""PyTorch Lightning in function mode: train a ``LightningModule`` with the trial's optimizer and schedule.

Three additions to an ordinary Lightning script (``studies/examples/lightning_digits.py`` is a complete one)::

    from lrsearch.integrations.lightning import TrialCallback, trial_arguments, trial_optimizers

    def configure_optimizers(self):                      # in your LightningModule
        return trial_optimizers(self.ctx, self)

    trainer = L.Trainer(**trial_arguments(ctx), callbacks=[TrialCallback(ctx)])   # in train(ctx)

- :func:`trial_optimizers` builds ``ctx.build_optimizer`` over the module's parameters and ``ctx.build_scheduler``
  over the trainer's optimizer steps per epoch, returned in Lightning's format with ``interval: "step"``: lrsearch
  schedules step once per optimizer step.
- :class:`TrialCallback` reports every epoch whose validation ran (``trainer.callback_metrics``: what the module
  logged with ``self.log``, the objective among them) at the end of that training epoch, checks each step's loss
  (``training_step``'s return) for divergence as the built-in loop does, and sets ``trainer.should_stop`` when the
  trial is pruned or diverged: ``fit`` returns normally, the trial is PRUNED with its reason. Loggers and
  checkpoints are Lightning's and are left as the Trainer was configured.
- :func:`trial_arguments` gives the Trainer the trial's budget and device: ``max_epochs=ctx.epochs``, one device.

DDP: a trial trains in one process, on one device (CPU or one GPU). Lightning's multi-process strategies cannot run
inside it: ``ddp_spawn`` and ``ddp_fork`` train in child processes that cannot report to the trial, and
``strategy="ddp"`` re-runs the command line for each extra rank (a second ``lrsearch tune``) before any callback
runs. Refused: ``ddp_spawn`` when it pickles the trial's context (one line, the study stops); any Trainer of more
than one process at ``setup`` (under ``ddp_fork`` that runs in the children, so the trial fails with their
traceback); a rank started by re-running the command line, at import, with one line (Lightning then kills the
launching process, as it does whenever a rank fails). Pass ``**trial_arguments(ctx)`` (one device) and use
``lrsearch tune --workers N`` to train trials in parallel.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from lrsearch.integrations import budget_problem, mark_trial_process, refuse_launched_rank, report_to_trial, require
from lrsearch.training.function_mode import ContextError, TrialStopped

pl = require("lightning.pytorch", "lightning", __name__)

if TYPE_CHECKING:
    from lrsearch.training.function_mode import TrialContext

__all__ = ["TrialCallback", "trial_arguments", "trial_optimizers"]

ONE_PROCESS = "use Trainer(devices=1), as trial_arguments(ctx) sets, and lrsearch tune --workers N for parallel trials"

refuse_launched_rank(__name__, ONE_PROCESS)


def trial_arguments(ctx: TrialContext) -> dict[str, Any]:
    """``Trainer`` keyword arguments for the trial: its epoch budget, and one device, the trial's.

    Example:
        >>> trainer = L.Trainer(**trial_arguments(ctx), callbacks=[TrialCallback(ctx)], logger=False)  # doctest: +SKIP
    """
    accelerator, _, index = ctx.device.partition(":")
    return {"max_epochs": ctx.epochs, "accelerator": "gpu" if accelerator == "cuda" else accelerator,
            "devices": [int(index)] if index else 1}


def trial_optimizers(ctx: TrialContext, module: pl.LightningModule) -> dict[str, Any]:
    """What ``configure_optimizers`` returns: the trial's optimizer and, unless the schedule is ``constant``, its
    schedule stepped after every optimizer step.

    Steps per epoch are the trainer's: ``ceil(num_training_batches / accumulate_grad_batches)``.

    Raises:
        ContextError: the module's trainer has no :class:`TrialCallback`, or its training data has no length.

    Example:
        >>> class Model(L.LightningModule):  # doctest: +SKIP
        ...     def configure_optimizers(self):
        ...         return trial_optimizers(self.ctx, self)
    """
    trainer = module.trainer
    if not any(isinstance(callback, TrialCallback) and callback.ctx is ctx for callback in trainer.callbacks):
        raise ContextError(f"{__name__}.trial_optimizers: the Trainer has no TrialCallback(ctx) for this trial, so "
                           "no epoch would be reported (pass callbacks=[TrialCallback(ctx)] to the Trainer)")
    trainer.estimated_stepping_batches  # noqa: B018 -- loads the training data when not yet loaded
    batches = trainer.num_training_batches
    if not math.isfinite(batches):
        raise ContextError(f"{__name__}.trial_optimizers: the training data has no length, so the schedule's "
                           "steps are unknown (allowed: a sized dataset or DataLoader)")
    steps = math.ceil(batches / trainer.accumulate_grad_batches)
    # The module itself: Muon tells its hidden weights from the rest by name.
    optimizer = ctx.build_optimizer(module, steps_per_epoch=steps)
    scheduler = ctx.build_scheduler(optimizer, steps)
    if scheduler is None:
        return {"optimizer": optimizer}
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}


class TrialCallback(pl.Callback):
    """Reports each validated epoch to the trial and stops the run cleanly when the trial is pruned or diverged.

    Args:
        ctx: The trial's context, as ``train(ctx)`` received it.

    Example:
        >>> trainer = L.Trainer(**trial_arguments(ctx), callbacks=[TrialCallback(ctx)])  # doctest: +SKIP
        >>> trainer.fit(model, train_loader, val_loader)  # returns early when the trial is pruned  # doctest: +SKIP
    """

    def __init__(self, ctx: TrialContext) -> None:
        self.ctx = ctx
        self._validated = False
        mark_trial_process(ctx)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.world_size > 1:
            raise ContextError(f"{__name__}: Trainer(strategy={type(trainer.strategy).__name__}) trains over "
                               f"{trainer.world_size} processes, and a trial trains in one ({ONE_PROCESS})")
        problem = budget_problem(self.ctx, "Trainer", "max_epochs", trainer.max_epochs, trainer.max_steps)
        if problem:
            raise ContextError(f"{__name__}: {problem}")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.ctx.implementation == "user":  # build_optimizer never ran: the trial's optimizer is not the one used
            raise ContextError(f"{__name__}: configure_optimizers of {type(pl_module).__name__} did not build the "
                               "trial's optimizer (return trial_optimizers(ctx, self) from it)")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validated = False
        self._mode(trainer, training=True)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mode(trainer, training=False)  # Schedule-Free: validate at the averaged weights

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validated = self._validated or not trainer.sanity_checking
        self._mode(trainer, training=True)

    @staticmethod
    def _mode(trainer: pl.Trainer, training: bool) -> None:
        from lrsearch.training.optimizers import set_mode

        for optimizer in trainer.optimizers:
            set_mode(optimizer, training)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None or self.ctx.stopped is not None:
            return
        try:
            self.ctx.check_divergence(loss.detach())
        except TrialStopped:
            _stop(trainer)  # the epoch ends after this batch; its end reports nothing more

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.enable_validation and not self._validated and self.ctx.stopped is None:
            return  # no validation this epoch (check_val_every_n_epoch): its val metrics would be stale
        if report_to_trial(self.ctx, trainer.current_epoch, trainer.callback_metrics, _samples(trainer)):
            _stop(trainer)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        mark_trial_process(None)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        mark_trial_process(None)  # Lightning skips teardown hooks when fit raises


def _stop(trainer: pl.Trainer) -> None:
    trainer.should_stop = True
    # A stopped trial ends at this epoch even where the Trainer asks for a minimum of epochs or steps.
    trainer.fit_loop.min_epochs = 0
    trainer.fit_loop.epoch_loop.min_steps = None


def _samples(trainer: pl.Trainer) -> int | None:
    """Training samples per epoch, when every batch of a sized dataset is trained; None otherwise."""
    limit = trainer.limit_train_batches
    dataset = getattr(trainer.train_dataloader, "dataset", None)
    if not (isinstance(limit, float) and limit == 1.0) or dataset is None:
        return None
    try:
        return len(dataset)
    except TypeError:
        return None
