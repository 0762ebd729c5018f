"""lrsearch: optimizer and learning-rate search for PyTorch.

The public surface: users import ``lrsearch.<name>`` and never depend on the file layout. Heavy modules (torch,
optuna, mlflow) load on first use of a name, so ``import lrsearch`` and the CLI's ``--help`` stay instant.

The package is built in layers, each importing only the ones below it (checked by ``lint-imports``, see
pyproject.toml): ``cli`` -> ``tracking`` -> ``study`` -> ``distributed`` | ``integrations`` -> ``training`` ->
``config`` -> ``errors``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lrsearch.errors import LrsearchError, SpecError, StudyNotFoundError, TaskError, UsageError

__version__ = "0.1.0"

__all__ = [
    "CombinedOptimizer",
    "LrsearchError",
    "SpecError",
    "StudyNotFoundError",
    "Task",
    "TaskError",
    "TrialContext",
    "TrialStopped",
    "UsageError",
    "__version__",
    "build_optimizer",
    "build_scheduler",
    "load_spec",
    "lr_find",
    "tune",
]

_LAZY = {
    "CombinedOptimizer": "lrsearch.training.split",
    "Task": "lrsearch.training.tasks",
    "TrialContext": "lrsearch.training.function_mode",
    "TrialStopped": "lrsearch.training.function_mode",
    "build_optimizer": "lrsearch.training.optimizers",
    "build_scheduler": "lrsearch.training.optimizers",
    "load_spec": "lrsearch.config.spec",
    "lr_find": "lrsearch.training.lr_finder",
    "tune": "lrsearch.study.tune",
}

if TYPE_CHECKING:
    from lrsearch.config.spec import load_spec
    from lrsearch.study.tune import tune
    from lrsearch.training.function_mode import TrialContext, TrialStopped
    from lrsearch.training.lr_finder import lr_find
    from lrsearch.training.optimizers import build_optimizer, build_scheduler
    from lrsearch.training.split import CombinedOptimizer
    from lrsearch.training.tasks import Task


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lrsearch' has no attribute {name!r}")
