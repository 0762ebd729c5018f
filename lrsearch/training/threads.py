"""Torch CPU threads per process: the study's setting, or 1 unless more threads train clearly faster here."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lrsearch.training.prepared import Prepared

MORE_THREADS_GAIN = 0.85
"""More threads are chosen only when they train at least 15% faster than fewer: on a near-tie (digits, 1 vs 2
threads within a few percent) they lose once the MLflow tracking process or other work takes a core, since
intra-op threads wait for each other at every op (--workers 1 ran 156-174 trials/min with 2 threads, 189-200
with 1)."""


def configure_threads(threads: int | None, workers: int = 1, prepared: Prepared | None = None) -> int:
    """Torch CPU threads: the study's ``train.threads``; else, for a CPU task, 1 unless this machine's share of
    cores (cores / workers) trains the task's model clearly faster (``MORE_THREADS_GAIN``), timed on a few real
    steps.

    Small models gain nothing from intra-op threads, and on a machine where other work takes cores, threads that
    wait for each other at every op make training many times slower; bigger models do gain. Timing answers it.
    """
    import torch

    share = max(1, (os.cpu_count() or 1) // workers)
    count = threads or share
    if prepared is not None and prepared.data is not None and prepared.data.streamed:
        from lrsearch.training.streaming import StreamedData

        if isinstance(prepared.data, StreamedData):
            prepared.data.core_share = share  # its loader workers take the cores training leaves spare
    # Function mode has no Task to time: the user's loop runs with the core share.
    if threads is None and share > 1 and prepared is not None and prepared.task is not None \
            and prepared.device == "cpu":
        count = _fastest_threads(prepared, (1, share))
    torch.set_num_threads(count)
    return count


def _fastest_threads(prepared: Prepared, candidates: tuple[int, ...]) -> int:
    import torch

    from lrsearch.training.batched import time_stacked_steps
    from lrsearch.training.runner import time_training_steps

    best: dict[int, float] = {}
    batch_size, stacked = prepared.spec.train.batch_size, prepared.spec.train.batch_trials
    for _ in range(2):  # alternate, so a burst of other work does not decide it alone
        for count in candidates:
            torch.set_num_threads(count)
            # Stacked trials run bigger matrix products than one model: they may want threads one model does not.
            try:
                seconds = time_training_steps(prepared.task, prepared.data, batch_size) if stacked == 1 else \
                    time_stacked_steps(prepared.task, prepared.data, batch_size, stacked)
            except Exception:  # a model that cannot train: its trials fail, and say why, as results
                return candidates[0]
            best[count] = min(best.get(count, math.inf), seconds)
    return pick_threads(best)


def pick_threads(seconds: dict[int, float]) -> int:
    """The thread count to train with, from the seconds a few steps took with each: the fewest, unless more are
    at least ``1 - MORE_THREADS_GAIN`` faster than the fewest chosen so far."""
    chosen = min(seconds)
    for count in sorted(seconds):
        if seconds[count] < seconds[chosen] * MORE_THREADS_GAIN:
            chosen = count
    return chosen


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()
