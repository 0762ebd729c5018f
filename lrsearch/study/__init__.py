"""The study layer: Optuna studies run to their budget.

``storage`` opens the storage and creates or loads studies, ``algorithms`` builds the sampler and pruner a study
file names, ``budget`` decides how many trials may start, ``trials`` records one trial's start, epochs and outcome,
``loop`` is the one study loop (one trial at a time, stacked trials and DDP trials alike), ``tune`` validates a
study and runs it, ``workers`` runs several processes on one study, and ``results`` reads a study back.
"""
