"""Training frameworks in function mode: PyTorch Lightning and the Hugging Face ``Trainer``.

Each integration is the few pieces a framework's own training loop needs to train one lrsearch trial: the trial's
optimizer and schedule in the framework's format, and a callback that reports each epoch through
:meth:`~lrsearch.TrialContext.report` and stops the run cleanly when the trial is pruned or diverged.

- :mod:`lrsearch.integrations.lightning`: ``pip install 'lrsearch[lightning]'``
- :mod:`lrsearch.integrations.transformers`: ``pip install 'lrsearch[transformers]'``

Nothing here is imported by ``import lrsearch``; importing an integration without its framework raises
:class:`MissingExtraError` (one line, naming the extra to install). This package sits beside ``distributed``, above
``training``: it builds on function mode only.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from lrsearch.errors import TaskError

if TYPE_CHECKING:
    from lrsearch.training.function_mode import TrialContext

__all__ = ["TRIAL_ENV", "MissingExtraError", "budget_problem", "mark_trial_process", "refuse_launched_rank",
           "report_to_trial", "require"]

TRIAL_ENV = "LRSEARCH_TRIAL"
"""Set in a trial's process by the integrations' callbacks; a process that inherits it is a copy started inside a
trial (Lightning's ``strategy="ddp"`` re-runs the command line for each extra rank)."""


class MissingExtraError(TaskError):
    """An integration was used without its framework installed; every trial would fail alike, so the study stops."""


def require(module: str, extra: str, integration: str) -> ModuleType:
    """Import ``module`` for ``integration``, or raise :class:`MissingExtraError` naming the extra to install.

    Example:
        >>> pl = require("lightning.pytorch", "lightning", "lrsearch.integrations.lightning")
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(f"{integration} needs the {module.partition('.')[0]!r} package ({exc}); install it "
                                f"with: pip install 'lrsearch[{extra}]'") from None


def mark_trial_process(ctx: TrialContext | None) -> None:
    """Mark this process as training ``ctx``'s trial, so that a copy of the command line a framework starts inside
    it refuses to run (:func:`refuse_launched_rank`); None removes the mark when the trial's training ends."""
    if ctx is None:
        os.environ.pop(TRIAL_ENV, None)
    else:
        os.environ[TRIAL_ENV] = str(ctx.trial_number)


def refuse_launched_rank(integration: str, remedy: str) -> None:
    """Refuse to run in a rank that a framework's launcher started by re-running the command line inside a trial.

    Raises:
        ContextError: this process inherited a trial's mark and has a ``LOCAL_RANK`` above 0.
    """
    from lrsearch.training.function_mode import ContextError

    rank = os.environ.get("LOCAL_RANK", "0")
    if TRIAL_ENV in os.environ and rank != "0":
        raise ContextError(f"{integration}: this process is local rank {rank}, started by re-running the command "
                           f"line inside trial {os.environ[TRIAL_ENV]}: a function-mode trial trains in one process "
                           f"({remedy})")


def budget_problem(ctx: TrialContext, framework: str, epochs_name: str, epochs: Any, max_steps: Any) -> str | None:
    """Why the framework's run would not train the trial's budget, ``ctx.epochs`` whole epochs, or None."""
    if max_steps not in (None, -1):
        return (f"{framework}(max_steps={max_steps!r}): a trial trains budget.epochs={ctx.epochs} whole epochs "
                f"(allowed: max_steps unset, {epochs_name}=ctx.epochs)")
    if epochs != ctx.epochs:
        return (f"{framework}({epochs_name}={epochs!r}): a trial trains budget.epochs={ctx.epochs} epochs "
                f"(allowed: {epochs_name}=ctx.epochs; trial_arguments(ctx) sets it)")
    return None


def report_to_trial(ctx: TrialContext, epoch: int, metrics: Mapping[str, Any], samples: int | None = None) -> bool:
    """Report one epoch's metrics through ``ctx.report``; True when the trial must stop (pruned or diverged).

    Metrics that are not single numbers (a framework may log tensors of several values, strings) are left out, and
    so are ``epoch`` and ``samples``; the objective metric's absence is reported by ``ctx.report`` itself.

    Example:
        >>> if report_to_trial(ctx, epoch, {"val_loss": 0.4, "train_loss": 0.5}):  # doctest: +SKIP
        ...     trainer.should_stop = True
    """
    from lrsearch.training.function_mode import TrialStopped

    if ctx.stopped is not None:
        return True  # the framework ran on after the stop (e.g. a minimum epoch count): keep stopping, never report
    numbers = {name: value for name, value in metrics.items()
               if _is_number(value) and name not in ("epoch", "samples")}  # the frameworks' counters, not metrics
    try:
        ctx.report(epoch, samples=samples, **numbers)
    except TrialStopped:
        return True  # ctx.stopped holds it: run_function_trial marks the trial PRUNED with its reason
    return False


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    size = getattr(value, "numel", None)  # torch tensors; numpy scalars and arrays have .size
    size = size() if callable(size) else getattr(value, "size", None)
    return size == 1
