"""The training layer: what one trial is and how it trains.

``tasks`` (the Task contract, built-in tasks), ``data`` (what a trial reads: tensors, and the global batches),
``streaming`` (datasets read through a ``DataLoader``), ``devices`` (device, ranks, the launcher's environment),
``precision`` (autocast, loss scaling), ``memory`` (out of memory, peak memory), ``prepared`` (everything a process
loads once), ``optimizers`` (optimizers and schedules from a configuration, fastest implementation first, and their
train/eval modes), ``split`` (Muon's parameter split and the one optimizer a loop steps for a pair), ``trial``
(settings, metrics, outcome, the divergence rule, the one trial monitor and the collective a trial trains through),
``runner`` (the trial loop), ``batched`` and ``batched_updates`` (K trials as one stacked model), ``function_mode``
(the user's own loop), ``lr_finder`` (the LR range test) and ``threads`` (torch CPU threads). Nothing here knows of
Optuna studies or MLflow: a trial reports through an ``on_epoch`` hook.
"""

__all__ = ["batched", "batched_updates", "data", "devices", "function_mode", "lr_finder", "memory", "optimizers",
           "precision", "prepared", "runner", "split", "streaming", "tasks", "threads", "trial"]
