"""The configuration layer: what the user asks for, validated before anything runs.

``spec`` reads and validates a study file, ``search_space`` holds the optimizer presets and the conditional space
Optuna samples, and ``overrides`` applies command-line values to a study. Nothing here imports torch, optuna or
mlflow, so the CLI validates study files instantly.
"""
