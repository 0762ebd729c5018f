"""Function mode with PyTorch Lightning: a LightningModule classifying scikit-learn's bundled 8x8 digits.

An ordinary Lightning script; the lines that involve lrsearch are marked ``# lrsearch``: the module's
``configure_optimizers`` returns :func:`~lrsearch.integrations.lightning.trial_optimizers`, and the Trainer gets
:func:`~lrsearch.integrations.lightning.trial_arguments` (the trial's epochs and device) and
:class:`~lrsearch.integrations.lightning.TrialCallback` (reports each epoch, stops the run when the trial is pruned).
The model is an MLP whose width and depth come from the study's ``task.args``.

Used from a study file (the module is found next to the study file)::

    task: {function: "lightning_digits:train", args: {hidden: 64, layers: 2}}

Example:
    >>> trainer = fit(ctx)  # one trial; trainer.current_epoch is how many epochs it trained
"""

from __future__ import annotations

import functools
import itertools
import logging
import warnings
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from lrsearch.integrations.lightning import TrialCallback, trial_arguments, trial_optimizers  # lrsearch

if TYPE_CHECKING:
    from lrsearch import TrialContext

# Quiet inside a study: a trial is one of many, and Lightning would print its banner and hints for each.
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", ".*does not have many workers.*")


@functools.lru_cache(maxsize=2)
def load_digits(val_fraction: float = 0.2) -> tuple[TensorDataset, TensorDataset]:
    """Train and val sets of digits, pixels scaled to [0, 1]; loaded once per process.

    Example:
        >>> train, val = load_digits()
        >>> len(train), len(val)
        (1437, 360)
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    x, y = sklearn_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x / 16.0, y, test_size=val_fraction, random_state=0)
    return (TensorDataset(torch.tensor(x_train, dtype=torch.float32), torch.tensor(y_train)),
            TensorDataset(torch.tensor(x_val, dtype=torch.float32), torch.tensor(y_val)))


class DigitsClassifier(L.LightningModule):
    """An MLP over the 64 pixels; logs ``train_loss``, ``val_loss`` and ``val_accuracy`` once per epoch."""

    def __init__(self, ctx: TrialContext, hidden: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.ctx = ctx  # lrsearch: configure_optimizers builds the trial's optimizer
        sizes = [64] + [hidden] * layers
        blocks: list[torch.nn.Module] = []
        for width_in, width_out in itertools.pairwise(sizes):
            blocks += [torch.nn.Linear(width_in, width_out), torch.nn.ReLU()]
        self.net = torch.nn.Sequential(*blocks, torch.nn.Linear(sizes[-1], 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)  # the epoch's mean, as lrsearch reports it
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", torch.nn.functional.cross_entropy(logits, y))
        self.log("val_accuracy", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> Any:
        return trial_optimizers(self.ctx, self)  # lrsearch: the sampled optimizer, its schedule stepped per step


def fit(ctx: TrialContext) -> L.Trainer:
    """Train one trial and return its Trainer; a pruned trial's ``fit`` returns at the pruned epoch."""
    train_set, val_set = load_digits(ctx.args.get("val_fraction", 0.2))
    model = DigitsClassifier(ctx, int(ctx.args.get("hidden", 64)), int(ctx.args.get("layers", 2)))
    generator = torch.Generator().manual_seed(ctx.seed)  # the same batches in every trial
    train_loader = DataLoader(train_set, batch_size=ctx.batch_size, shuffle=True, generator=generator)
    val_loader = DataLoader(val_set, batch_size=512)
    trainer = L.Trainer(**trial_arguments(ctx), callbacks=[TrialCallback(ctx)],  # lrsearch
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, train_loader, val_loader)
    return trainer


def train(ctx: TrialContext) -> None:
    """One trial (what ``task.function`` names): the reports are the trial's metrics, so nothing is returned."""
    fit(ctx)
