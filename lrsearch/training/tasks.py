"""The Task contract, the built-in tasks, and loading user tasks from ``task.entrypoint``.

A :class:`Task` is what a trial trains: a model factory, train and val datasets, a loss and extra metrics.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrsearch.errors import TaskError, first_line

if TYPE_CHECKING:
    from torch import Tensor, nn
    from torch.utils.data import Dataset

    from lrsearch.config.spec import StudySpec


@dataclass
class Task:
    """A training problem lrsearch can search optimizers for.

    Args:
        model: Builds a freshly initialised model; called once per trial after seeding, so every trial starts
            from the same weights.
        train: Training set: any map-style ``Dataset`` or ``IterableDataset`` whose items are ``(input, target)``
            (tensors or numbers). A ``TensorDataset`` is kept as tensors on the device; any other dataset is
            streamed through a ``DataLoader``, its items read (and augmented) anew every epoch.
        val: Validation set, same form.
        loss: ``loss(output, target)`` returning the mean loss of a batch.
        metrics: Extra validation metrics ``name -> fn(output, target) -> float``, each a mean over the batch's
            samples (lrsearch averages them over batches weighted by batch size). Reported as ``val_<name>``.
        info: Facts about the task worth reporting (the quadratic's analytically optimal step size).
        loader: Builds the loader of a streamed dataset in place of ``torch.utils.data.DataLoader``, called as it
            would be (``loader(dataset, **options)``, once per dataset per process), for a custom collate or sampler.
        in_memory: ``True`` reads a deterministic map-style dataset once into tensors on the device (the fast
            path); ``False`` streams even a ``TensorDataset``; ``None`` decides by the dataset's type.
        hidden_weights: For an optimizer of hidden layers only (Muon): ``hidden_weights(model)`` gives the names of
            the parameters it updates (2-D each), AdamW taking the rest; None uses lrsearch's split rule (every 2-D
            weight but embeddings and the output layer, :mod:`lrsearch.training.split`).

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> x, y = torch.randn(64, 3), torch.randn(64, 1)
        >>> task = Task(lambda: torch.nn.Linear(3, 1), TensorDataset(x, y), TensorDataset(x, y),
        ...             torch.nn.functional.mse_loss)
    """

    model: Callable[[], nn.Module]
    train: Dataset
    val: Dataset
    loss: Callable[[Tensor, Tensor], Tensor]
    metrics: dict[str, Callable[[Tensor, Tensor], float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    loader: Callable[..., Iterable[Any]] | None = None
    in_memory: bool | None = None
    hidden_weights: Callable[[nn.Module], Iterable[str]] | None = None

    def metric_names(self) -> list[str]:
        """Every metric a trial reports: ``train_loss``, ``val_loss`` and ``val_<name>`` for each extra metric."""
        return ["train_loss", "val_loss", *(f"val_{name}" for name in self.metrics)]


def digits_mlp(hidden: int = 128, val_fraction: float = 0.2, split_seed: int = 0) -> Task:
    """scikit-learn's bundled 8x8 digits (1,797 images), standardised, stratified split, a two-layer MLP."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch.utils.data import TensorDataset

    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=val_fraction, stratify=y, random_state=split_seed
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)  # train statistics only: no val leakage
    std[std == 0] = 1.0  # corner pixels that are always blank in train must not blow up in val

    def tensors(features: Any, labels: Any) -> TensorDataset:
        inputs = torch.tensor((features - mean) / std, dtype=torch.float32)
        return TensorDataset(inputs, torch.tensor(labels, dtype=torch.long))

    def model() -> nn.Module:
        return torch.nn.Sequential(
            torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, 10),
        )

    return Task(
        model=model,
        train=tensors(x_train, y_train),
        val=tensors(x_val, y_val),
        loss=torch.nn.functional.cross_entropy,
        metrics={"accuracy": _accuracy},
    )


def _accuracy(output: Tensor, target: Tensor) -> float:
    return (output.argmax(dim=1) == target).float().mean().item()


def quadratic(dim: int = 100, n_train: int = 1000, n_val: int = 500, seed: int = 42) -> Task:
    """A noisy quadratic in the style of DeepOBS ``quadratic_deep``, with a known Hessian spectrum.

    Loss of a sample x: ``0.5 (theta - x)^T Q (theta - x)``, x ~ N(0, I), theta starting at 1. Q = V diag(lam) V^T
    with 90% of the eigenvalues in [0.1, 1] and 10% in [30, 60], V a random rotation. For (full-batch) gradient
    descent the step size that contracts fastest is ``2 / (lam_max + lam_min)``, reported as
    ``info["optimal_lr"]``; ``info["max_stable_lr"]`` is ``2 / lam_max``.
    """
    import torch
    from torch.utils.data import TensorDataset

    gen = torch.Generator().manual_seed(seed)
    n_large = max(1, dim // 10)
    small = 0.1 + 0.9 * torch.rand(dim - n_large, generator=gen, dtype=torch.float64)
    large = 30.0 + 30.0 * torch.rand(n_large, generator=gen, dtype=torch.float64)
    eigenvalues = torch.cat([small, large])
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    sqrt_q = (rotation * eigenvalues.sqrt()) @ rotation.T  # Q^(1/2), so the loss is 0.5 |Q^(1/2) (theta - x)|^2
    sqrt_q = sqrt_q.float()

    class Quadratic(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.theta = torch.nn.Parameter(torch.ones(dim))
            self.register_buffer("sqrt_q", sqrt_q, persistent=False)

        def forward(self, x: Tensor) -> Tensor:
            return (self.theta - x) @ self.sqrt_q

    def data(n: int) -> TensorDataset:
        x = torch.randn(n, dim, generator=gen)
        return TensorDataset(x, torch.zeros(n, 1))

    lam_min, lam_max = eigenvalues.min().item(), eigenvalues.max().item()
    return Task(
        model=Quadratic,
        train=data(n_train),
        val=data(n_val),
        loss=_half_squared_norm,
        info={"optimal_lr": 2.0 / (lam_max + lam_min), "max_stable_lr": 2.0 / lam_max,
              "lambda_min": lam_min, "lambda_max": lam_max},
    )


def _half_squared_norm(output: Tensor, target: Tensor) -> Tensor:
    return 0.5 * output.pow(2).sum(dim=1).mean()


BUILTIN: dict[str, Callable[..., Task]] = {"digits-mlp": digits_mlp, "quadratic": quadratic}


def load_task(spec: StudySpec) -> Task:
    """The study's Task: a built-in by name, or what ``task.entrypoint(**task.args)`` returns.

    Raises:
        TaskError: the entrypoint does not import, is not callable, fails, or returns something that is not a Task.
    """
    if isinstance(spec.task, str):
        return BUILTIN[spec.task]()
    if spec.task.entrypoint is None:
        raise TaskError("task.function (function mode) has no Task to load; use the function-mode runner")
    function = import_callable(spec.task.entrypoint, "task.entrypoint", spec.source)
    try:
        inspect.signature(function).bind(**spec.task.args)
    except TypeError as exc:  # the arguments do not fit: the study file's task.args, not the user's code
        raise TaskError(f"task.entrypoint {spec.task.entrypoint!r} rejected task.args {spec.task.args}: {exc} "
                        f"(its signature is {inspect.signature(function)})") from None
    except ValueError:
        pass  # no signature to read (a builtin): calling it tells
    try:
        task = function(**spec.task.args)
    except Exception as exc:  # the user's code failed building its task: say where, in one line
        raise TaskError(f"task.entrypoint {spec.task.entrypoint!r} failed: {type(exc).__name__}: {first_line(exc)}"
                        ) from exc
    if not isinstance(task, Task):
        raise TaskError(
            f"task.entrypoint {spec.task.entrypoint!r} returned {type(task).__name__}, expected lrsearch.Task"
        )
    return task


def import_callable(target: str, field_name: str, study_file: str | None) -> Callable[..., Any]:
    """Import ``module:function``; the study file's directory and the current directory are importable."""
    module_name, _, attr = target.partition(":")
    for directory in [str(Path(study_file).parent) if study_file else None, str(Path.cwd())]:
        if directory and directory not in sys.path:
            sys.path.insert(0, directory)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code is the user's to see, in one line
        problem = f"{type(exc).__name__}: {exc}"
        raise TaskError(f"{field_name} {target!r}: cannot import {module_name!r} ({problem})") from exc
    function = getattr(module, attr, None)
    if function is None:
        raise TaskError(f"{field_name} {target!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(function):
        raise TaskError(f"{field_name} {target!r} is a {type(function).__name__}, not callable")
    return function
