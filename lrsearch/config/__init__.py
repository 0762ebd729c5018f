"""The configuration layer: what the user asks for, validated before anything runs.

``spec`` reads and validates a study file (``problems`` turns validation errors into one line per bad value),
``presets`` is the optimizer catalogue (classes, searched hyperparameters, literature ranges, textbook points, what
each needs installed), ``search_space`` the conditional space Optuna samples over it, ``priors`` the textbook
portfolio and the relative space the prior sampler searches, and ``overrides`` applies command-line values to a
study. Nothing here imports torch, optuna or mlflow, so the CLI validates study files instantly.
"""

__all__ = ["overrides", "presets", "priors", "problems", "search_space", "spec"]
