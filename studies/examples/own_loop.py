"""Function mode with a hand-written torch loop: a small MLP on scikit-learn's bundled diabetes regression set.

lrsearch calls ``train(ctx)`` once per trial. The loop is ordinary torch code; only three lines involve lrsearch:
``ctx.build_optimizer``, ``ctx.build_scheduler`` and ``ctx.report``. A pruned or diverged trial ends by
``ctx.report`` raising, so the loop needs no early-exit logic of its own.

Used from a study file (the module is found next to the study file)::

    task: {function: "own_loop:train", args: {hidden: 64}}

Example:
    >>> from lrsearch.training.function_mode import run_function_trial
    >>> outcome = run_function_trial(train, spec, config, settings)  # what each trial does
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

    from lrsearch import TrialContext


@functools.lru_cache(maxsize=4)
def load_data(val_fraction: float = 0.2, split_seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Standardised train/val tensors, loaded once per process: the function is imported once, so the cache
    serves every trial.

    Example:
        >>> x_train, y_train, x_val, y_val = load_data()
        >>> x_train.shape[1], len(x_train) + len(x_val)
        (10, 442)
    """
    import torch
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    x, y = load_diabetes(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=val_fraction, random_state=split_seed)
    # Train statistics only, for inputs and targets: no val leakage, and losses near 1 at the start.
    x_mean, x_std, y_mean, y_std = x_train.mean(0), x_train.std(0), y_train.mean(), y_train.std()

    def tensor(values: Any) -> Tensor:
        return torch.tensor(values, dtype=torch.float32)

    return (tensor((x_train - x_mean) / x_std), tensor((y_train - y_mean) / y_std)[:, None],
            tensor((x_val - x_mean) / x_std), tensor((y_val - y_mean) / y_std)[:, None])


def train(ctx: TrialContext) -> dict[str, float]:
    """One trial: train an MLP for ``ctx.epochs`` epochs, reporting train and val MSE (standardised target).

    Example:
        >>> train(ctx)  # called by lrsearch with the trial's context
        {'train_loss': 0.41, 'val_loss': 0.52, 'val_r2': 0.48}
    """
    import torch

    hidden = int(ctx.args.get("hidden", 64))
    x_train, y_train, x_val, y_val = (t.to(ctx.device) for t in load_data(ctx.args.get("val_fraction", 0.2)))
    model = torch.nn.Sequential(torch.nn.Linear(x_train.shape[1], hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, 1)).to(ctx.device)
    optimizer = ctx.build_optimizer(model.parameters())
    steps_per_epoch = -(-len(x_train) // ctx.batch_size)
    scheduler = ctx.build_scheduler(optimizer, steps_per_epoch)
    generator = torch.Generator().manual_seed(ctx.seed)  # the same batches in every trial
    loss_fn = torch.nn.functional.mse_loss
    metrics: dict[str, float] = {}
    for epoch in range(ctx.epochs):
        model.train()
        total = 0.0
        for batch in torch.randperm(len(x_train), generator=generator).split(ctx.batch_size):
            loss = loss_fn(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += loss.item() * len(batch)
        model.eval()
        with torch.no_grad():
            val_loss = loss_fn(model(x_val), y_val).item()
        metrics = {"train_loss": total / len(x_train), "val_loss": val_loss,
                   "val_r2": 1.0 - val_loss / y_val.var(unbiased=False).item()}
        ctx.report(epoch, **metrics, samples=len(x_train))  # raises when the trial is pruned or diverges
    return metrics
