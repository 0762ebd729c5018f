"""The training layer: what one trial is and how it trains.

``tasks`` (the Task contract, built-in tasks), ``data`` (datasets as batches), ``devices`` (device, ranks, the
launcher's environment), ``prepared`` (everything a process loads once), ``optimizers`` (torch optimizers and
schedules, fastest implementation first), ``trial`` (settings, metrics, outcome, the divergence rule and the
collective a trial trains through), ``runner`` (the trial loop), ``batched`` and ``batched_updates`` (K trials as one
stacked model), ``function_mode`` (the user's own loop), ``lr_finder`` (the LR range test) and ``threads`` (torch CPU
threads). Nothing here knows of Optuna studies or MLflow: a trial reports through an ``on_epoch`` hook.
"""
