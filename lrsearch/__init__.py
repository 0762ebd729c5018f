"""lrsearch: optimizer and learning-rate search for PyTorch.

The public surface. Heavy modules (torch, optuna, mlflow) load on first use of a name, so ``import lrsearch``
and the CLI's ``--help`` stay instant.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lrsearch.errors import LrsearchError, SpecError, StudyNotFoundError, TaskError, UsageError

__version__ = "0.1.0"

__all__ = [
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
    "Task": "lrsearch.tasks",
    "TrialContext": "lrsearch.function_mode",
    "TrialStopped": "lrsearch.function_mode",
    "build_optimizer": "lrsearch.optimizers",
    "build_scheduler": "lrsearch.optimizers",
    "load_spec": "lrsearch.spec",
    "lr_find": "lrsearch.lr_finder",
    "tune": "lrsearch.tuning",
}

if TYPE_CHECKING:
    from lrsearch.function_mode import TrialContext, TrialStopped
    from lrsearch.lr_finder import lr_find
    from lrsearch.optimizers import build_optimizer, build_scheduler
    from lrsearch.spec import load_spec
    from lrsearch.tasks import Task
    from lrsearch.tuning import tune


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lrsearch' has no attribute {name!r}")
