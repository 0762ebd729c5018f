"""The study layer: Optuna studies run to their budget.

``storage`` opens the storage (``journal``: lrsearch's journal file) and creates or loads studies, ``algorithms``
builds the sampler and pruner a study file names, ``prior_search`` is the default search (portfolio, prior sampler,
halving pruner), ``confirmation`` re-runs the best configurations on new seeds, ``warm_start`` starts from earlier
studies, ``budget`` decides how many trials may start (``states``: why some never trained), ``heartbeat`` tells live
trials from dead ones, ``observers`` tells the display and tracking of every event, ``trials`` records one trial's
start, epochs and outcome, ``loop`` is the one study loop (one trial at a time, stacked trials and DDP trials
alike), ``tune`` sets a study up and runs it, ``workers`` runs several processes on one study, and ``results``
reads a study back (its answer, its top trials).
"""

__all__ = ["algorithms", "budget", "confirmation", "heartbeat", "journal", "loop", "observers", "prior_search",
           "results", "states", "storage", "trials", "tune", "warm_start", "workers"]
